//! `check` names the file, the key and the line.
