//! Step-time physics (being written).
