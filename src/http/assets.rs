//! The browser clients, compiled into the binary so `huizhen serve` needs no files on disk.

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

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Files served under `/static/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "room.js",
        content_type: JS,
        body: include_str!("../../static/room.js"),
    },
    Asset {
        name: "room.css",
        content_type: CSS,
        body: include_str!("../../static/room.css"),
    },
    Asset {
        name: "call.js",
        content_type: JS,
        body: include_str!("../../static/call.js"),
    },
    Asset {
        name: "clinic.js",
        content_type: JS,
        body: include_str!("../../static/clinic.js"),
    },
    Asset {
        name: "i18n.js",
        content_type: JS,
        body: include_str!("../../static/i18n.js"),
    },
    Asset {
        name: "audio.js",
        content_type: JS,
        body: include_str!("../../static/audio.js"),
    },
    Asset {
        name: "clinic.css",
        content_type: CSS,
        body: include_str!("../../static/clinic.css"),
    },
    Asset {
        name: "patient.js",
        content_type: JS,
        body: include_str!("../../static/patient.js"),
    },
    Asset {
        name: "doctor.js",
        content_type: JS,
        body: include_str!("../../static/doctor.js"),
    },
    Asset {
        name: "expert.js",
        content_type: JS,
        body: include_str!("../../static/expert.js"),
    },
    Asset {
        name: "companion.js",
        content_type: JS,
        body: include_str!("../../static/companion.js"),
    },
    Asset {
        name: "watch.js",
        content_type: JS,
        body: include_str!("../../static/watch.js"),
    },
];

/// Top-level pages (`/<name>`), each a plain HTML file in `static/`.
pub const PAGES: &[(&str, &str)] = &[
    ("room", ROOM_HTML),
    ("patient", include_str!("../../static/patient.html")),
    ("doctor", include_str!("../../static/doctor.html")),
    ("expert", include_str!("../../static/expert.html")),
    ("companion", include_str!("../../static/companion.html")),
    ("watch", include_str!("../../static/watch.html")),
];

/// The page served at `/<name>`, if there is one.
pub fn page(name: &str) -> Option<&'static str> {
    PAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, body)| *body)
}

/// Look up an embedded file.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_a_page_imports_is_embedded() {
        let sources = PAGES
            .iter()
            .map(|(_, body)| *body)
            .chain(ASSETS.iter().map(|a| a.body));
        for text in sources {
            for part in text
                .split("/static/")
                .skip(1)
                .chain(text.split("from './").skip(1))
            {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .collect();
                if name.ends_with(".js") || name.ends_with(".css") {
                    assert!(
                        find(&name).is_some(),
                        "{name} is referenced but not in ASSETS"
                    );
                }
            }
        }
    }
}
