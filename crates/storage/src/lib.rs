//! keel-storage
