//! qingluan-core
