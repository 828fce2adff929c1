//! SVG plots: latency against N, and the data plane's cost per state.

use std::path::Path;

use plotters::prelude::*;

use crate::bench::dataplane::{State, Target};
use crate::bench::{DataplaneRow, Sample};

/// Median latency against N: ADD on the left, DEL on the right, one line
/// per binary and backend.
pub fn plot(samples: &[Sample], path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    let max_n = samples.iter().map(|s| s.n).max().unwrap_or(1).max(1) as f64;
    let mut series: Vec<(String, Vec<&Sample>)> = Vec::new();
    for s in samples {
        let name = format!("{} {}", s.binary, s.backend);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(s),
            None => series.push((name, vec![s])),
        }
    }
    for (area, op) in [(left, "ADD"), (right, "DEL")] {
        let ms = |s: &Sample| {
            if op == "ADD" {
                s.add.median_ms
            } else {
                s.del.median_ms
            }
        };
        let max_ms = samples.iter().map(ms).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{op} median latency"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max_n * 1.05, 0f64..max_ms)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("containers already installed (N)")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let style = if name.starts_with("upstream") {
                ShapeStyle::from(color).stroke_width(2)
            } else {
                ShapeStyle::from(color).stroke_width(3)
            };
            let xy: Vec<(f64, f64)> = points.iter().map(|s| (s.n as f64, ms(s))).collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), style))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(xy.into_iter().map(|p| Circle::new(p, 3, style.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Median µs per new connection by state: unpublished port on the left,
/// published on the right, one line per backend.
pub fn plot_dataplane(rows: &[DataplaneRow], path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    let label = |state: State| {
        let installed = rows
            .iter()
            .find(|r| r.state == state)
            .map_or(0, |r| r.installed);
        match state {
            State::Empty => "empty (probe only)".to_string(),
            State::Mappings => format!("{installed} mappings"),
            State::Containers => format!("{installed} containers"),
            State::IndexedContainers => format!("{installed} containers (maps/tree)"),
        }
    };
    let max_us = rows.iter().map(|r| r.median_us).fold(1.0, f64::max) * 1.2;
    let mut backends: Vec<&str> = rows.iter().map(|r| r.backend.as_str()).collect();
    backends.dedup();
    for (area, target) in [(left, Target::Unpublished), (right, Target::Published)] {
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("new TCP connection, {} port", target.name()),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((0..State::ALL.len() - 1).into_segmented(), 0f64..max_us)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("host state")
            .y_desc("µs per connection (median of batches)")
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    State::ALL.get(*i).map(|&s| label(s)).unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, backend) in backends.iter().enumerate() {
            let style = ShapeStyle::from(Palette99::pick(i).to_rgba()).stroke_width(3);
            let xy: Vec<(SegmentValue<usize>, f64)> = State::ALL
                .iter()
                .enumerate()
                .filter_map(|(x, &state)| {
                    rows.iter()
                        .find(|r| r.backend == *backend && r.state == state && r.target == target)
                        .map(|r| (SegmentValue::CenterOf(x), r.median_us))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), style))
                .map_err(|e| e.to_string())?
                .label(backend.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(xy.into_iter().map(|p| Circle::new(p, 4, style.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_report::tests::samples;

    #[test]
    fn plot_writes_an_svg_with_every_series() {
        let samples = samples();
        let path = std::env::temp_dir().join(format!("bench-plot-{}.svg", std::process::id()));
        plot(&samples, &path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("ours iptables-nft") && svg.contains("upstream iptables-nft"));
        assert!(svg.contains("ADD median latency") && svg.contains("DEL median latency"));
    }

    #[test]
    fn the_dataplane_plot_names_every_backend_and_state() {
        let row = |backend: &str, state, installed, target, us| DataplaneRow {
            backend: backend.into(),
            state,
            installed,
            target,
            median_us: us,
            p95_us: us,
            batches: 3,
            conns: 10,
        };
        let mut rows = Vec::new();
        for b in ["nftables", "iptables-legacy"] {
            for t in [Target::Unpublished, Target::Published] {
                rows.push(row(b, State::Empty, 0, t, 80.0));
                rows.push(row(b, State::Mappings, 5000, t, 120.0));
                rows.push(row(b, State::Containers, 1000, t, 100.0));
            }
        }
        let path = std::env::temp_dir().join(format!("bench-dp-{}.svg", std::process::id()));
        plot_dataplane(&rows, &path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg");
        let _ = std::fs::remove_file(&path);
        for needle in [
            "nftables",
            "iptables-legacy",
            "5000 mappings",
            "1000 containers",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        assert!(svg.contains("unpublished port") && svg.contains("published port"));
    }
}
