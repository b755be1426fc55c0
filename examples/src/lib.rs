//! Runnable examples of the harness libraries; see README.md in this folder.
