//! Renders the macOS bundle's Info.plist from Info.plist.in.
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
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("Info.plist");
    fs::write(out, plist).expect("write Info.plist");
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
