//! qingluan-dataplane
