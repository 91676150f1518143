//! The IFD Handler API v3 that pcscd binds: thin `extern "C"` functions over the safe
//! core. This module and `sys` hold all of the crate's `unsafe`. It knows slots only by
//! the slot contract ([`CardSlot`](crate::slot::CardSlot)).
//!
//! Each export goes through `ifd_export!`: it installs the log bridge, logs its entry
//! with the Lun, turns a panic into an IFD error instead of aborting pcscd, then checks
//! its pointers, finds the slot and delegates.

mod consts;
mod log_bridge;

use std::ffi::{c_char, c_int, CStr};
use std::time::Duration;

use consts::*;

use vpcd_protocol::config::{ConfigError, ReaderConfig};
use vpcd_protocol::part10::{PinCommand, MAX_PIN_DIGITS};

use crate::readers::{self, OpenSlot};
use crate::slot::{Limits, PowerAction, SlotError};

/// pcsc-lite's DWORD and RESPONSECODE: `unsigned long` and `long`, except on macOS.
#[cfg(not(target_os = "macos"))]
pub type Dword = std::ffi::c_ulong;
#[cfg(not(target_os = "macos"))]
pub type ResponseCode = std::ffi::c_long;
#[cfg(target_os = "macos")]
pub type Dword = u32;
#[cfg(target_os = "macos")]
pub type ResponseCode = i32;

/// SCARD_IO_HEADER, passed by value to IFDHTransmitToICC.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScardIoHeader {
    pub protocol: Dword,
    pub length: Dword,
}

type PollFn = extern "C" fn(Dword, c_int) -> ResponseCode;
type StopFn = extern "C" fn(Dword) -> ResponseCode;

/// Largest ATR pcscd has room for (MAX_ATR_SIZE).
const MAX_ATR_SIZE: usize = 33;
/// Reader entries one loaded copy of the library serves. pcscd reads the answer as one
/// byte; pcsc-lite before 2.5 serves at most 16 reader contexts in all, whatever we
/// say, and 2.5 has no limit of its own.
const MAX_READERS: u8 = 255;

/// The body of every function pcscd calls: `ifd_export!(NAME, lun, LEVEL, |lun| ...)`.
///
/// It installs the log bridge (once per process), logs the call's entry with its Lun
/// at LEVEL (`trace` for the calls pcscd makes many times a second), and runs the body
/// under `catch_unwind`: a panic, which would abort pcscd if it crossed the `extern
/// "C"` boundary, is logged and answered with IFD_COMMUNICATION_ERROR, so pcscd fails
/// that one call and the reader goes on. The body checks its own pointers, finds its
/// slot with [`with_slot`] and delegates.
macro_rules! ifd_export {
    ($name:literal, $lun:expr, $level:ident, $body:expr) => {{
        log_bridge::init();
        let lun = $lun as u32;
        log::$level!(concat!($name, " (lun {:#x})"), lun);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> ResponseCode {
            $body(lun)
        })) {
            Ok(rc) => rc,
            Err(_) => {
                log::error!(
                    concat!($name, " (lun {:#x}): internal error, call refused"),
                    lun
                );
                IFD_COMMUNICATION_ERROR
            }
        }
    }};
}

/// Runs `f` on the open slot `lun`, or answers `missing`.
fn with_slot(
    lun: u32,
    missing: ResponseCode,
    f: impl FnOnce(&OpenSlot) -> ResponseCode,
) -> ResponseCode {
    match readers::get(lun) {
        Some(open) => f(&open),
        None => {
            log::error!("lun {lun:#x}: no such channel");
            missing
        }
    }
}

fn open_channel(lun: u32, config: Result<ReaderConfig, ConfigError>) -> ResponseCode {
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            log::error!("lun {lun:#x}: {e}");
            return IFD_COMMUNICATION_ERROR;
        }
    };
    log_bridge::raise_level(config.log_level);
    match readers::open(lun, config) {
        Ok(()) => IFD_SUCCESS,
        Err(e) => {
            log::error!("lun {lun:#x}: {e}");
            IFD_COMMUNICATION_ERROR
        }
    }
}

/// Copies `bytes` into a caller's buffer of `*length` bytes and sets `*length`.
///
/// # Safety
/// `length` must be valid for reads and writes, and `value` for writes of `*length`
/// bytes (or either may be null, which is refused).
unsafe fn answer(bytes: &[u8], length: *mut Dword, value: *mut u8) -> ResponseCode {
    if length.is_null() || value.is_null() {
        return IFD_COMMUNICATION_ERROR;
    }
    // SAFETY: non-null, and valid per this function's contract.
    let capacity = unsafe { *length } as usize;
    if capacity < bytes.len() {
        return IFD_ERROR_INSUFFICIENT_BUFFER;
    }
    // SAFETY: `value` has room for `capacity >= bytes.len()` bytes; the buffers are
    // distinct (ours is Rust-owned).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), value, bytes.len());
        *length = bytes.len() as Dword;
    }
    IFD_SUCCESS
}

/// The answer to IFDHGetCapabilities for `tag`, or None for an unknown tag.
fn capability(open: &OpenSlot, tag: Dword) -> Option<Vec<u8>> {
    Some(match tag {
        TAG_IFD_ATR | SCARD_ATTR_ATR_STRING => open.slot.atr().unwrap_or_default(),
        TAG_IFD_SLOTS_NUMBER => vec![open.config.slots as u8],
        TAG_IFD_SIMULTANEOUS_ACCESS => vec![MAX_READERS],
        // Readers share no state but a short lookup lock, and every slot has its own
        // connection and lock: pcscd may call us for different readers and slots at once.
        TAG_IFD_THREAD_SAFE | TAG_IFD_SLOT_THREAD_SAFE => vec![1],
        // Reading a capability never changes anything: pcscd passes any client's
        // SCardGetAttrib here unfiltered (a SCARD_SHARE_DIRECT connection needs no
        // card). What pcscd's teardown needs is done by the stop callback.
        TAG_IFD_POLLING_THREAD_KILLABLE => vec![0],
        TAG_IFD_POLLING_THREAD_WITH_TIMEOUT => {
            (poll_for_event as PollFn as usize).to_ne_bytes().to_vec()
        }
        TAG_IFD_STOP_POLLING_THREAD => (stop_polling as StopFn as usize).to_ne_bytes().to_vec(),
        SCARD_ATTR_VENDOR_NAME => b"vsmartcard vpcd (Rust)\0".to_vec(),
        SCARD_ATTR_VENDOR_IFD_TYPE => b"Virtual PCD\0".to_vec(),
        SCARD_ATTR_VENDOR_IFD_VERSION => version_word().to_le_bytes().to_vec(),
        SCARD_ATTR_MAXINPUT => (open.slot.limits().max_command as u32)
            .to_le_bytes()
            .to_vec(),
        SCARD_ATTR_VENDOR_IFD_SERIAL_NO => {
            let mut serial = open.config.serial_number().into_bytes();
            serial.push(0);
            serial
        }
        SCARD_ATTR_CHANNEL_ID => {
            let port = open.config.port_of(slot_index(open)).unwrap_or(0);
            ((CHANNEL_TYPE_TCP << 16) as u32 | u32::from(port))
                .to_le_bytes()
                .to_vec()
        }
        // 2: present (a virtual card is "swallowed"), 0: absent, as libccid answers.
        SCARD_ATTR_ICC_PRESENCE => vec![if open.slot.presence().is_present() {
            2
        } else {
            0
        }],
        SCARD_ATTR_ICC_INTERFACE_STATUS => vec![u8::from(open.slot.atr().is_some())],
        // 1: an ISO/IEC 7816 asynchronous card, which every vicc is; 0: no card.
        SCARD_ATTR_ICC_TYPE_PER_ATR => vec![u8::from(open.slot.presence().is_present())],
        SCARD_ATTR_CURRENT_PROTOCOL_TYPE => open.protocol().to_le_bytes().to_vec(),
        _ => return None,
    })
}

/// The USB ids the reader reports (part 10's wIdVendor / wIdProduct): on macOS those of
/// the pretend-USB device the bundle is registered for, from the same build settings as
/// its Info.plist (build.rs).
const USB_VENDOR_ID: u16 = parse_u16(env!("VPCD_USB_VENDOR_ID_VALUE"));
const USB_PRODUCT_ID: u16 = parse_u16(env!("VPCD_USB_PRODUCT_ID_VALUE"));

/// A decimal number that build.rs wrote (a build fails on a bad one).
const fn parse_u16(s: &str) -> u16 {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut n: u32 = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit());
        n = n * 10 + (bytes[i] - b'0') as u32;
        assert!(n <= u16::MAX as u32);
        i += 1;
    }
    n as u16
}

/// The index of a slot inside its reader.
fn slot_index(open: &OpenSlot) -> u16 {
    (open.lun & 0xFFFF) as u16
}

/// The crate version as 0xMMmmbbbb, the layout of SCARD_ATTR_VENDOR_IFD_VERSION.
fn version_word() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    (part(env!("CARGO_PKG_VERSION_MAJOR")) << 24)
        | (part(env!("CARGO_PKG_VERSION_MINOR")) << 16)
        | (part(env!("CARGO_PKG_VERSION_PATCH")) & 0xFFFF)
}

/// The answer to IFDHControl's informational codes, or None for a code we do not
/// support. `pinpad`: the reader is a PIN pad (`pinpad=yes`) and its card's vicc
/// enters PINs; only then are the PIN features and their properties listed.
fn control(code: Dword, limits: Limits, pinpad: bool) -> Option<Vec<u8>> {
    match code {
        CM_IOCTL_GET_FEATURE_REQUEST | CM_IOCTL_GET_FEATURE_REQUEST_WINDOWS => {
            let mut features = vec![(FEATURE_GET_TLV_PROPERTIES, IOCTL_FEATURE_GET_TLV_PROPERTIES)];
            if pinpad {
                features.push((FEATURE_VERIFY_PIN_DIRECT, IOCTL_FEATURE_VERIFY_PIN_DIRECT));
                features.push((FEATURE_MODIFY_PIN_DIRECT, IOCTL_FEATURE_MODIFY_PIN_DIRECT));
            }
            let mut tlv = vec![];
            for (feature, ioctl) in features {
                tlv.extend_from_slice(&[feature, 4]);
                tlv.extend_from_slice(&(ioctl as u32).to_be_bytes());
            }
            Some(tlv)
        }
        IOCTL_FEATURE_GET_TLV_PROPERTIES => {
            let mut tlv = vec![PCSCV2_PART10_PROPERTY_DW_MAX_APDU_DATA_SIZE, 4];
            tlv.extend_from_slice(&(limits.max_command_data as u32).to_le_bytes());
            tlv.extend_from_slice(&[PCSCV2_PART10_PROPERTY_W_ID_VENDOR, 2]);
            tlv.extend_from_slice(&USB_VENDOR_ID.to_le_bytes());
            tlv.extend_from_slice(&[PCSCV2_PART10_PROPERTY_W_ID_PRODUCT, 2]);
            tlv.extend_from_slice(&USB_PRODUCT_ID.to_le_bytes());
            // No PPDU: APDUs travel through SCardTransmit only.
            tlv.extend_from_slice(&[PCSCV2_PART10_PROPERTY_B_PPDU_SUPPORT, 1, 0]);
            if pinpad {
                // No display; entry ends with the validation key (the keypad's Enter);
                // no second timeout; the digits this PIN pad takes.
                tlv.extend_from_slice(&[PCSCV2_PART10_PROPERTY_W_LCD_LAYOUT, 2, 0, 0]);
                tlv.extend_from_slice(&[
                    PCSCV2_PART10_PROPERTY_B_ENTRY_VALIDATION_CONDITION,
                    1,
                    0x02,
                ]);
                tlv.extend_from_slice(&[PCSCV2_PART10_PROPERTY_B_TIMEOUT2, 1, 0]);
                tlv.extend_from_slice(&[PCSCV2_PART10_PROPERTY_B_MIN_PIN_SIZE, 1, 1]);
                tlv.extend_from_slice(&[PCSCV2_PART10_PROPERTY_B_MAX_PIN_SIZE, 1, MAX_PIN_DIGITS]);
            }
            Some(tlv)
        }
        _ => None,
    }
}

fn slot_error_code(e: &SlotError) -> ResponseCode {
    match e {
        SlotError::NoCard => IFD_ICC_NOT_PRESENT,
        SlotError::Timeout => IFD_RESPONSE_TIMEOUT,
        SlotError::Io(_) | SlotError::Protocol(_) => IFD_COMMUNICATION_ERROR,
        SlotError::ReplyTooLarge { .. } => IFD_ERROR_INSUFFICIENT_BUFFER,
        SlotError::Unsupported => IFD_ERROR_NOT_SUPPORTED,
    }
}

/// The largest reply a PIN command's card may give (a short response and SW1 SW2).
const PIN_REPLY_MAX: usize = 256 + 2;

/// FEATURE_VERIFY_PIN_DIRECT / FEATURE_MODIFY_PIN_DIRECT: the structure parsed
/// strictly (a malformed one never reaches the card), the PIN entered on the vicc's
/// side, the card's reply (or part 10's 64 xx) returned.
fn pin_control(open: &OpenSlot, code: Dword, input: &[u8]) -> Result<Vec<u8>, ResponseCode> {
    let parsed = if code == IOCTL_FEATURE_VERIFY_PIN_DIRECT {
        PinCommand::parse_verify(input)
    } else {
        PinCommand::parse_modify(input)
    };
    let command = parsed.map_err(|e| {
        log::error!("lun {:#x}: refusing the PIN structure: {e}", open.lun);
        // SCARD_E_NOT_TRANSACTED, where a reader without the feature gives
        // SCARD_E_UNSUPPORTED_FEATURE.
        IFD_COMMUNICATION_ERROR
    })?;
    let mut reply = vec![0u8; PIN_REPLY_MAX];
    match open.slot.enter_pin(&command, &mut reply) {
        Ok(n) => {
            reply.truncate(n);
            Ok(reply)
        }
        Err(e) => {
            log::error!("lun {:#x}: PIN entry failed: {e}", open.lun);
            Err(slot_error_code(&e))
        }
    }
}

/// # Safety
/// `device_name` is null or a NUL-terminated string valid for the call (pcscd's).
#[no_mangle]
pub unsafe extern "C" fn IFDHCreateChannelByName(
    lun: Dword,
    device_name: *const c_char,
) -> ResponseCode {
    ifd_export!("IFDHCreateChannelByName", lun, info, |lun| {
        if device_name.is_null() {
            log::error!("lun {lun:#x}: no DEVICENAME given");
            return IFD_COMMUNICATION_ERROR;
        }
        // SAFETY: non-null and NUL-terminated per this function's contract.
        let name = unsafe { CStr::from_ptr(device_name) }.to_string_lossy();
        log::info!("lun {lun:#x}: DEVICENAME \"{}\"", name.escape_debug());
        open_channel(lun, ReaderConfig::parse(&name))
    })
}

#[no_mangle]
pub extern "C" fn IFDHCreateChannel(lun: Dword, channel: Dword) -> ResponseCode {
    ifd_export!("IFDHCreateChannel", lun, info, |lun| {
        let channel = u32::try_from(channel).unwrap_or(u32::MAX);
        open_channel(lun, ReaderConfig::from_channel_id(channel))
    })
}

#[no_mangle]
pub extern "C" fn IFDHCloseChannel(lun: Dword) -> ResponseCode {
    ifd_export!("IFDHCloseChannel", lun, info, |lun| {
        readers::close(lun);
        IFD_SUCCESS
    })
}

/// # Safety
/// `length` points to the size of the buffer `value` (pcscd's).
#[no_mangle]
pub unsafe extern "C" fn IFDHGetCapabilities(
    lun: Dword,
    tag: Dword,
    length: *mut Dword,
    value: *mut u8,
) -> ResponseCode {
    ifd_export!("IFDHGetCapabilities", lun, debug, |lun| {
        with_slot(lun, IFD_COMMUNICATION_ERROR, |open| {
            match capability(open, tag) {
                // SAFETY: pcscd's buffer and its length, per this function's contract.
                Some(bytes) => unsafe { answer(&bytes, length, value) },
                None => {
                    log::debug!("lun {lun:#x}: tag {tag:#x} not supported");
                    IFD_ERROR_TAG
                }
            }
        })
    })
}

#[no_mangle]
pub extern "C" fn IFDHSetCapabilities(
    lun: Dword,
    tag: Dword,
    _length: Dword,
    _value: *mut u8,
) -> ResponseCode {
    ifd_export!("IFDHSetCapabilities", lun, debug, |lun| {
        log::debug!("lun {lun:#x}: cannot set tag {tag:#x}");
        IFD_NOT_SUPPORTED
    })
}

#[no_mangle]
pub extern "C" fn IFDHSetProtocolParameters(
    lun: Dword,
    protocol: Dword,
    _flags: u8,
    _pts1: u8,
    _pts2: u8,
    _pts3: u8,
) -> ResponseCode {
    ifd_export!("IFDHSetProtocolParameters", lun, debug, |lun| {
        // A virtual card has no transmission protocol to negotiate: any will do, and
        // it is what clients then read as the current protocol.
        with_slot(lun, IFD_COMMUNICATION_ERROR, |open| {
            log::debug!("lun {lun:#x}: protocol {protocol:#x}");
            open.set_protocol(u32::try_from(protocol).unwrap_or(0));
            IFD_SUCCESS
        })
    })
}

/// # Safety
/// `atr` has room for MAX_ATR_SIZE (33) bytes and `atr_length` is writable (pcscd's),
/// or they are null.
#[no_mangle]
pub unsafe extern "C" fn IFDHPowerICC(
    lun: Dword,
    action: Dword,
    atr: *mut u8,
    atr_length: *mut Dword,
) -> ResponseCode {
    ifd_export!("IFDHPowerICC", lun, debug, |lun| {
        if atr.is_null() || atr_length.is_null() {
            return IFD_COMMUNICATION_ERROR;
        }
        // SAFETY: writable per this function's contract.
        unsafe { *atr_length = 0 };
        let action = match action {
            IFD_POWER_UP => PowerAction::Up,
            IFD_POWER_DOWN => PowerAction::Down,
            IFD_RESET => PowerAction::Reset,
            other => {
                log::error!("lun {lun:#x}: unknown power action {other}");
                return IFD_NOT_SUPPORTED;
            }
        };
        with_slot(lun, IFD_NO_SUCH_DEVICE, |open| {
            match open.slot.power(action) {
                Ok(bytes) => {
                    let mut len = MAX_ATR_SIZE as Dword;
                    // SAFETY: `atr` has room for MAX_ATR_SIZE bytes per the contract.
                    let rc = unsafe { answer(&bytes, &mut len, atr) };
                    if rc == IFD_SUCCESS {
                        // SAFETY: writable per the contract.
                        unsafe { *atr_length = len };
                    }
                    rc
                }
                Err(SlotError::NoCard) => IFD_ICC_NOT_PRESENT,
                Err(_) => IFD_ERROR_POWER_ACTION,
            }
        })
    })
}

/// # Safety
/// `tx` holds `tx_length` bytes; `rx` has room for `*rx_length` bytes; `recv_pci` is
/// null or writable (pcscd's buffers).
#[no_mangle]
pub unsafe extern "C" fn IFDHTransmitToICC(
    lun: Dword,
    send_pci: ScardIoHeader,
    tx: *const u8,
    tx_length: Dword,
    rx: *mut u8,
    rx_length: *mut Dword,
    recv_pci: *mut ScardIoHeader,
) -> ResponseCode {
    ifd_export!("IFDHTransmitToICC", lun, trace, |lun| {
        if tx.is_null() || rx.is_null() || rx_length.is_null() {
            return IFD_COMMUNICATION_ERROR;
        }
        // SAFETY: readable and writable per this function's contract.
        let capacity = std::mem::replace(unsafe { &mut *rx_length }, 0) as usize;
        // SAFETY: pcscd's command buffer holds `tx_length` bytes.
        let command = unsafe { std::slice::from_raw_parts(tx, tx_length as usize) };
        // SAFETY: pcscd's reply buffer has room for `capacity` bytes, and nothing else
        // refers to it during the call.
        let reply = unsafe { std::slice::from_raw_parts_mut(rx, capacity) };
        with_slot(lun, IFD_NO_SUCH_DEVICE, |open| {
            match open.slot.transmit(command, reply) {
                Ok(n) => {
                    // SAFETY: writable per the contract; `recv_pci` is checked for null.
                    unsafe {
                        *rx_length = n as Dword;
                        if !recv_pci.is_null() {
                            *recv_pci = send_pci;
                        }
                    }
                    IFD_SUCCESS
                }
                Err(e) => slot_error_code(&e),
            }
        })
    })
}

#[no_mangle]
pub extern "C" fn IFDHICCPresence(lun: Dword) -> ResponseCode {
    ifd_export!("IFDHICCPresence", lun, trace, |lun| {
        with_slot(lun, IFD_NO_SUCH_DEVICE, |open| {
            if open.slot.presence().check() {
                IFD_ICC_PRESENT
            } else {
                IFD_ICC_NOT_PRESENT
            }
        })
    })
}

/// # Safety
/// `tx` holds `tx_length` bytes, `rx` has room for `rx_length` bytes and
/// `bytes_returned` is writable (pcscd's), or they are null.
#[no_mangle]
pub unsafe extern "C" fn IFDHControl(
    lun: Dword,
    code: Dword,
    tx: *const u8,
    tx_length: Dword,
    rx: *mut u8,
    rx_length: Dword,
    bytes_returned: *mut Dword,
) -> ResponseCode {
    ifd_export!("IFDHControl", lun, debug, |lun| {
        if bytes_returned.is_null() {
            return IFD_COMMUNICATION_ERROR;
        }
        // SAFETY: writable per this function's contract.
        unsafe { *bytes_returned = 0 };
        let input: &[u8] = if tx.is_null() {
            &[]
        } else {
            // SAFETY: pcscd's input buffer holds `tx_length` bytes.
            unsafe { std::slice::from_raw_parts(tx, tx_length as usize) }
        };
        with_slot(lun, IFD_COMMUNICATION_ERROR, |open| {
            let pinpad = open.config.pinpad && open.slot.pin_entry();
            let result = match code {
                IOCTL_FEATURE_VERIFY_PIN_DIRECT | IOCTL_FEATURE_MODIFY_PIN_DIRECT if pinpad => {
                    pin_control(open, code, input)
                }
                _ => control(code, open.slot.limits(), pinpad).ok_or_else(|| {
                    log::debug!("lun {lun:#x}: control code {code:#x} not supported");
                    IFD_ERROR_NOT_SUPPORTED
                }),
            };
            match result {
                Ok(bytes) => {
                    let mut len = rx_length;
                    // SAFETY: `rx` has room for `rx_length` bytes per the contract.
                    let rc = unsafe { answer(&bytes, &mut len, rx) };
                    if rc == IFD_SUCCESS {
                        // SAFETY: writable per the contract.
                        unsafe { *bytes_returned = len };
                    }
                    rc
                }
                Err(rc) => rc,
            }
        })
    })
}

/// pcscd's polling callback (TAG_IFD_POLLING_THREAD_WITH_TIMEOUT): returns as soon as
/// the slot's card state changes, so pcscd checks presence at once.
extern "C" fn poll_for_event(lun: Dword, timeout_ms: c_int) -> ResponseCode {
    ifd_export!("poll_for_event", lun, trace, |lun| {
        with_slot(lun, IFD_NO_SUCH_DEVICE, |open| {
            let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
            open.slot.presence().wait_for_event(timeout);
            IFD_SUCCESS
        })
    })
}

/// pcscd's stop callback (TAG_IFD_STOP_POLLING_THREAD), called in a reader's teardown
/// and after the last SCardDisconnect: ends the current wait and holds the presence
/// reports until the next wait ([`Presence::stop_waiting`](crate::presence::Presence)).
extern "C" fn stop_polling(lun: Dword) -> ResponseCode {
    ifd_export!("stop_polling", lun, debug, |lun| {
        with_slot(lun, IFD_NO_SUCH_DEVICE, |open| {
            open.slot.presence().stop_waiting();
            IFD_SUCCESS
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_command: 65535,
        max_command_data: 65526,
    };

    #[test]
    fn feature_request_names_the_tlv_ioctl() {
        assert_eq!(
            control(CM_IOCTL_GET_FEATURE_REQUEST, LIMITS, false).unwrap(),
            [0x12, 4, 0x42, 0x33, 0x00, 0x12]
        );
        assert_eq!(
            control(CM_IOCTL_GET_FEATURE_REQUEST_WINDOWS, LIMITS, false),
            control(CM_IOCTL_GET_FEATURE_REQUEST, LIMITS, false),
            "Windows' code (0x313520) gets the same answer"
        );
        assert_eq!(CM_IOCTL_GET_FEATURE_REQUEST_WINDOWS, 0x0031_3520);
        let props = control(IOCTL_FEATURE_GET_TLV_PROPERTIES, LIMITS, false).unwrap();
        let mut tlvs = std::collections::HashMap::new();
        let mut rest = &props[..];
        while let [tag, len, tail @ ..] = rest {
            let (value, next) = tail.split_at(usize::from(*len));
            tlvs.insert(*tag, value.to_vec());
            rest = next;
        }
        assert_eq!(tlvs[&0x0A], 65526u32.to_le_bytes());
        assert_eq!(tlvs[&0x0B], USB_VENDOR_ID.to_le_bytes());
        assert_eq!(tlvs[&0x0C], USB_PRODUCT_ID.to_le_bytes());
        assert_eq!(tlvs[&0x09], [0]);
        assert!(control(0x4200_0001, LIMITS, false).is_none());
    }

    #[test]
    fn pin_features_only_for_a_pin_pad() {
        let plain = control(CM_IOCTL_GET_FEATURE_REQUEST, LIMITS, false).unwrap();
        assert!(!plain.chunks(6).any(|f| f[0] == 0x06 || f[0] == 0x07));
        let features = control(CM_IOCTL_GET_FEATURE_REQUEST, LIMITS, true).unwrap();
        assert_eq!(
            features,
            [
                0x12, 4, 0x42, 0x33, 0x00, 0x12, 0x06, 4, 0x42, 0x33, 0x00, 0x06, 0x07, 4, 0x42,
                0x33, 0x00, 0x07
            ]
        );
        let props = control(IOCTL_FEATURE_GET_TLV_PROPERTIES, LIMITS, true).unwrap();
        assert!(
            props.starts_with(&control(IOCTL_FEATURE_GET_TLV_PROPERTIES, LIMITS, false).unwrap())
        );
        assert!(props.ends_with(&[1, 2, 0, 0, 2, 1, 2, 3, 1, 0, 6, 1, 1, 7, 1, MAX_PIN_DIGITS]));
    }

    #[test]
    fn answer_respects_the_buffer() {
        let mut buf = [0u8; 4];
        let mut len: Dword = 2;
        // SAFETY: len and buf are valid locals; len <= buf.len().
        assert_eq!(
            unsafe { answer(&[1, 2, 3], &mut len, buf.as_mut_ptr()) },
            IFD_ERROR_INSUFFICIENT_BUFFER
        );
        len = 4;
        // SAFETY: as above.
        assert_eq!(
            unsafe { answer(&[1, 2, 3], &mut len, buf.as_mut_ptr()) },
            IFD_SUCCESS
        );
        assert_eq!((len, buf), (3, [1, 2, 3, 0]));
    }
}
