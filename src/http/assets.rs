//! The browser client, compiled into the binary so `huizhen serve` needs no files on disk.

/// One embedded file.
pub struct Asset {
    /// Name under `/static/`.
    pub name: &'static str,
    /// `Content-Type` header.
    pub content_type: &'static str,
    /// Body.
    pub body: &'static str,
}

/// The room page served at `/room/<name>`.
pub const ROOM_HTML: &str = include_str!("../../static/room.html");

/// Files served under `/static/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "room.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/room.js"),
    },
    Asset {
        name: "room.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../static/room.css"),
    },
];

/// Top-level pages (`/<name>`), each a plain HTML file in `static/`.
pub const PAGES: &[(&str, &str)] = &[("room", ROOM_HTML)];

/// The page served at `/<name>`, if there is one.
pub fn page(name: &str) -> Option<&'static str> {
    PAGES.iter().find(|(n, _)| *n == name).map(|(_, body)| *body)
}

/// Look up an embedded file.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}
