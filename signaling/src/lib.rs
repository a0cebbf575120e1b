pub mod protocol;
pub mod clinic;
