//! keel-api
