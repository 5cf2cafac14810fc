//! astranet
