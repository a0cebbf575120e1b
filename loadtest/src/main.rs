fn main() { eprintln!("huizhen-loadtest: not implemented yet (see issue 5)"); std::process::exit(2); }
