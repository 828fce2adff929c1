//! The nf_tables netlink constants we read rules, sets and elements with
//! (linux/netfilter/nf_tables.h, nf_nat.h; libnftnl's user data).

pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFT_META_L4PROTO: u32 = 16;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_LTE: u32 = 3;
pub(super) const NFT_CMP_GTE: u32 = 5;
pub(super) const NFTA_RANGE_OP: u16 = 2;
pub(super) const NFTA_RANGE_FROM_DATA: u16 = 3;
pub(super) const NFTA_RANGE_TO_DATA: u16 = 4;
pub(super) const NFT_RANGE_EQ: u32 = 0;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
/// NFT_JUMP, -3 as the kernel's be32 holds it.
pub(super) const NFT_JUMP: u32 = (-3i32) as u32;
pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(super) const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub(super) const NFTA_LOOKUP_SET: u16 = 1;
pub(super) const NFTA_LOOKUP_FLAGS: u16 = 5;
pub(super) const NFTA_FIB_DREG: u16 = 1;
pub(super) const NFTA_FIB_RESULT: u16 = 2;
pub(super) const NFTA_FIB_FLAGS: u16 = 3;
pub(super) const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub(super) const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// RTN_LOCAL, the address type `fib daddr type local` compares with.
pub(super) const RTN_LOCAL: u32 = 2;
/// libnftnl's rule user data: type-length-value, the comment is type 0.
pub(super) const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// The handle of the rule before (dumped for all but a chain's first).
pub(super) const NFTA_RULE_POSITION: u16 = 6;
pub(super) const NFT_NAT_DNAT: u32 = 1;
/// NF_NAT_RANGE_MAP_IPS, and with PROTO_SPECIFIED (a port).
pub(super) const NF_NAT_RANGE_MAP_IPS: u32 = 1;
pub(super) const NF_NAT_RANGE_MAP_IPS_PORT: u32 = 3;
pub(super) const NFT_MSG_GETSET: u16 = 10;
pub(super) const NFTA_SET_TABLE: u16 = 1;
pub(super) const NFTA_SET_NAME: u16 = 2;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_USERDATA: u16 = 6;
