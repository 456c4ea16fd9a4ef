//! Zone tests.
