pub mod clinic;
pub mod protocol;
