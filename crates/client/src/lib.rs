//! keel-client
