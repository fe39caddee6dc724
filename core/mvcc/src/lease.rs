//! The lessor: lease deadlines with time passed in by the caller.
