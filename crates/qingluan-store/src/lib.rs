//! qingluan-store
