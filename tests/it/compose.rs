//! The compose file's invariants (filled in with the compose work).
