//! The terminal QR code of a `vpcd://` URL for the Remote Smart Card Reader app.

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QrStyle {
    /// Black modules on a white background drawn with terminal colours: right on any
    /// terminal theme.
    Ansi,
    /// Block characters for the dark modules: dark text on a light background.
    Plain,
    /// Block characters for the light modules: light text on a dark background.
    Inverted,
}

pub(crate) const ANSI_BLACK_ON_WHITE: &str = "\x1b[30;47m";
const ANSI_RESET: &str = "\x1b[0m";

/// `text` as a QR code drawn with half blocks (two modules a character cell), with its
/// four-module quiet zone.
pub(crate) fn render_qr(text: &str, style: QrStyle) -> Result<String, qrcode::types::QrError> {
    // Level L, as the C tool: the smallest code, easiest to scan off a screen.
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)?;
    let mut renderer = code.render::<Dense1x2>();
    renderer.quiet_zone(true);
    if style == QrStyle::Inverted {
        renderer
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark);
    }
    let image = renderer.build();
    Ok(match style {
        QrStyle::Ansi => image
            .lines()
            .map(|l| format!("{ANSI_BLACK_ON_WHITE}{l}{ANSI_RESET}"))
            .collect::<Vec<_>>()
            .join("\n"),
        QrStyle::Plain | QrStyle::Inverted => image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addresses::vpcd_url;

    /// The module matrix of a rendered code: true for dark. Each character cell holds
    /// two modules, top and bottom.
    fn modules_of(rendered: &str, style: QrStyle) -> Vec<Vec<bool>> {
        let mut rows = vec![];
        for line in rendered.lines() {
            let line = line
                .strip_prefix(ANSI_BLACK_ON_WHITE)
                .and_then(|l| l.strip_suffix(ANSI_RESET))
                .unwrap_or(line);
            let (mut top, mut bottom) = (vec![], vec![]);
            for c in line.chars() {
                let (t, b) = match c {
                    ' ' => (false, false),
                    '\u{2580}' => (true, false),
                    '\u{2584}' => (false, true),
                    '\u{2588}' => (true, true),
                    other => panic!("unexpected {other:?} in the QR code"),
                };
                // Block characters are dark modules, except in the inverted style.
                let inv = style == QrStyle::Inverted;
                top.push(t != inv);
                bottom.push(b != inv);
            }
            rows.push(top);
            rows.push(bottom);
        }
        rows
    }

    /// Decodes a module matrix with rqrr, from a picture of it at 4 pixels a module.
    fn decode(modules: &[Vec<bool>]) -> String {
        const SCALE: usize = 4;
        let h = modules.len();
        let w = modules[0].len();
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w * SCALE, h * SCALE, |x, y| {
            if modules[y / SCALE][x / SCALE] {
                0
            } else {
                255
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the picture");
        grids[0].decode().expect("the QR code decodes").1
    }

    #[test]
    fn qr_round_trip() {
        for url in [
            vpcd_url("192.168.1.10", 35963),
            vpcd_url("2001:db8:85a3::8a2e:370:7334", 35964),
            vpcd_url("a-rather-long-host-name.some-subdomain.example.org", 65535),
        ] {
            for style in [QrStyle::Plain, QrStyle::Inverted, QrStyle::Ansi] {
                let rendered = render_qr(&url, style).unwrap();
                let modules = modules_of(&rendered, style);
                // Half blocks hold two rows: an odd-sized code gets a padding row.
                let n = modules[0].len();
                assert_eq!(modules.len(), n + 1, "{style:?}");
                let modules = &modules[..n];
                // The quiet zone: four light modules all around.
                for (y, row) in modules.iter().enumerate() {
                    assert_eq!(row.len(), n);
                    let border = if y < 4 || y >= n - 4 {
                        &row[..]
                    } else {
                        &row[..4]
                    };
                    assert!(
                        border.iter().chain(&row[n - 4..]).all(|m| !m),
                        "{style:?}: row {y}"
                    );
                }
                assert_eq!(decode(modules), url, "{style:?}");
            }
        }
    }

    #[test]
    fn pairing_uris_fit_a_qr_code() {
        use vpcd_protocol::tls::{Fingerprint, PairToken, Pairing, VpcdsUri};
        // The longest kind: an IPv6 host, a fingerprint and a pairing offer.
        let uri = VpcdsUri {
            host: "fd00:1111:2222:3333:4444:5555:6666:7777".into(),
            port: 65535,
            fingerprint: Fingerprint([0xAB; 32]),
            pair: Some(Pairing {
                port: 65535,
                token: PairToken([0xCD; 16]),
            }),
        }
        .to_string();
        let rendered = render_qr(&uri, QrStyle::Plain).unwrap();
        let modules = modules_of(&rendered, QrStyle::Plain);
        let n = modules[0].len();
        assert_eq!(decode(&modules[..n]), uri);
    }
}
