//! Task runners: processes on the owner machine, held to the lease.
