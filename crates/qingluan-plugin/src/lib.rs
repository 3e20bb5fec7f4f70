//! qingluan-plugin
