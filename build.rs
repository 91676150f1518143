//! Renders the macOS bundle's Info.plist from Info.plist.in, into OUT_DIR (for
//! `ifdvpcd::INFO_PLIST`) and into the bundle skeleton target/<profile>/ifd-vpcd.bundle.
//!
//! The pretend-USB device and the DEVICENAME come from the environment at build time:
//! VPCD_USB_VENDOR_ID, VPCD_USB_PRODUCT_ID (default 0x18d1 / 0x4ee1, as in the C
//! project's example) and VPCD_DEVICENAME (default /dev/null:0x8C7B).

use std::env;
use std::fs;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=Info.plist.in");
    for var in [
        "VPCD_USB_VENDOR_ID",
        "VPCD_USB_PRODUCT_ID",
        "VPCD_DEVICENAME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let get = |var: &str, default: &str| env::var(var).unwrap_or_else(|_| default.to_owned());
    let template = fs::read_to_string("Info.plist.in").expect("read Info.plist.in");
    let plist = template
        .replace("@VERSION@", &env::var("CARGO_PKG_VERSION").unwrap())
        .replace(
            "@VENDOR_ID@",
            &xml_escape(&get("VPCD_USB_VENDOR_ID", "0x18d1")),
        )
        .replace(
            "@PRODUCT_ID@",
            &xml_escape(&get("VPCD_USB_PRODUCT_ID", "0x4ee1")),
        )
        .replace(
            "@DEVICENAME@",
            &xml_escape(&get("VPCD_DEVICENAME", "/dev/null:0x8C7B")),
        );
    // The same ids as numbers for the driver's part 10 properties (wIdVendor/wIdProduct).
    for (var, default) in [
        ("VPCD_USB_VENDOR_ID", "0x18d1"),
        ("VPCD_USB_PRODUCT_ID", "0x4ee1"),
    ] {
        let text = get(var, default);
        let value =
            parse_id(&text).unwrap_or_else(|| panic!("{var}={text}: expected a 16-bit number"));
        println!("cargo:rustc-env={var}_VALUE={value}");
    }
    let out_dir = env::var("OUT_DIR").unwrap();
    fs::write(Path::new(&out_dir).join("Info.plist"), &plist).expect("write Info.plist");
    // The macOS bundle's skeleton beside the library: target/<profile>/ifd-vpcd.bundle
    // (OUT_DIR is target/<profile>/build/<package>/out). scripts/macos-bundle adds the
    // library itself.
    if let Some(profile_dir) = Path::new(&out_dir).ancestors().nth(3) {
        let contents = profile_dir.join("ifd-vpcd.bundle/Contents");
        if fs::create_dir_all(contents.join("MacOS")).is_ok() {
            let _ = fs::write(contents.join("Info.plist"), &plist);
        }
    }
}

/// A USB id as `0x18d1` or `6353`.
fn parse_id(s: &str) -> Option<u16> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
