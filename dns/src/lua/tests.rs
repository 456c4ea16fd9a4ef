//! LUA language tests.
