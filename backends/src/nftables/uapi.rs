//! The nf_tables netlink constants we read rules, sets and elements with
//! (linux/netfilter/nf_tables.h, nf_nat.h; libnftnl's user data).

pub(crate) const NFT_MSG_GETRULE: u16 = 7;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_HANDLE: u16 = 3;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_RULE_USERDATA: u16 = 7;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_META_KEY: u16 = 2;
pub(crate) const NFT_META_L4PROTO: u32 = 16;
pub(crate) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(crate) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(crate) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(crate) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(crate) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub(crate) const NFTA_CMP_DATA: u16 = 3;
pub(crate) const NFTA_CMP_SREG: u16 = 1;
pub(crate) const NFTA_CMP_OP: u16 = 2;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_CMP_LTE: u32 = 3;
pub(crate) const NFT_CMP_GTE: u32 = 5;
pub(crate) const NFTA_RANGE_OP: u16 = 2;
pub(crate) const NFTA_RANGE_FROM_DATA: u16 = 3;
pub(crate) const NFTA_RANGE_TO_DATA: u16 = 4;
pub(crate) const NFT_RANGE_EQ: u32 = 0;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_VERDICT_CHAIN: u16 = 2;
/// NFT_JUMP, -3 as the kernel's be32 holds it.
pub(crate) const NFT_JUMP: u32 = (-3i32) as u32;
pub(crate) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(crate) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(crate) const NFT_REG_VERDICT: u32 = 0;
pub(crate) const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub(crate) const NFTA_LOOKUP_SET: u16 = 1;
pub(crate) const NFTA_LOOKUP_FLAGS: u16 = 5;
pub(crate) const NFTA_FIB_DREG: u16 = 1;
pub(crate) const NFTA_FIB_RESULT: u16 = 2;
pub(crate) const NFTA_FIB_FLAGS: u16 = 3;
pub(crate) const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub(crate) const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// RTN_LOCAL, the address type `fib daddr type local` compares with.
pub(crate) const RTN_LOCAL: u32 = 2;
/// libnftnl's rule user data: type-length-value, the comment is type 0.
pub(crate) const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// The handle of the rule before (dumped for all but a chain's first).
pub(crate) const NFTA_RULE_POSITION: u16 = 6;
pub(crate) const NFT_NAT_DNAT: u32 = 1;
/// NF_NAT_RANGE_MAP_IPS, and with PROTO_SPECIFIED (a port).
pub(crate) const NF_NAT_RANGE_MAP_IPS: u32 = 1;
pub(crate) const NF_NAT_RANGE_MAP_IPS_PORT: u32 = 3;
pub(crate) const NFT_MSG_GETSET: u16 = 10;
pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
pub(crate) const NFT_MSG_GETSETELEM: u16 = 13;
pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(crate) const NFTA_SET_ELEM_USERDATA: u16 = 6;

// What iptables-nft's rules hold besides (iptables/netlink.rs).
pub(crate) const NFTA_META_DREG: u16 = 1;
pub(crate) const NFT_META_MARK: u32 = 3;
pub(crate) const NFTA_BITWISE_SREG: u16 = 1;
pub(crate) const NFTA_BITWISE_DREG: u16 = 2;
pub(crate) const NFTA_BITWISE_LEN: u16 = 3;
pub(crate) const NFTA_BITWISE_MASK: u16 = 4;
pub(crate) const NFTA_BITWISE_XOR: u16 = 5;
pub(crate) const NFTA_BITWISE_OP: u16 = 6;
pub(crate) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(crate) const NFT_CMP_NEQ: u32 = 1;
pub(crate) const NFTA_RANGE_SREG: u16 = 1;
/// NFTA_MATCH_* and NFTA_TARGET_* (nf_tables_compat.h): name, rev, info.
pub(crate) const NFTA_XT_NAME: u16 = 1;
pub(crate) const NFTA_XT_REV: u16 = 2;
pub(crate) const NFTA_XT_INFO: u16 = 3;
pub(crate) const NF_DROP: u32 = 0;
pub(crate) const NF_ACCEPT: u32 = 1;
pub(crate) const NFT_GOTO: u32 = (-4i32) as u32;
pub(crate) const NFT_RETURN: u32 = (-5i32) as u32;
