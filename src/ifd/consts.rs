//! The IFD Handler API v3 constants pcscd and this driver exchange
//! (`PCSC/ifdhandler.h`, `PCSC/reader.h`).

use super::{Dword, ResponseCode};

pub const IFD_SUCCESS: ResponseCode = 0;
pub const IFD_ERROR_TAG: ResponseCode = 600;
pub const IFD_ERROR_NOT_SUPPORTED: ResponseCode = 606;
pub const IFD_ERROR_POWER_ACTION: ResponseCode = 608;
pub const IFD_COMMUNICATION_ERROR: ResponseCode = 612;
pub const IFD_RESPONSE_TIMEOUT: ResponseCode = 613;
pub const IFD_NOT_SUPPORTED: ResponseCode = 614;
pub const IFD_ICC_PRESENT: ResponseCode = 615;
pub const IFD_ICC_NOT_PRESENT: ResponseCode = 616;
pub const IFD_NO_SUCH_DEVICE: ResponseCode = 617;
pub const IFD_ERROR_INSUFFICIENT_BUFFER: ResponseCode = 618;

pub const IFD_POWER_UP: Dword = 500;
pub const IFD_POWER_DOWN: Dword = 501;
pub const IFD_RESET: Dword = 502;

pub const TAG_IFD_ATR: Dword = 0x0303;
pub const TAG_IFD_SLOT_THREAD_SAFE: Dword = 0x0FAC;
pub const TAG_IFD_THREAD_SAFE: Dword = 0x0FAD;
pub const TAG_IFD_SLOTS_NUMBER: Dword = 0x0FAE;
pub const TAG_IFD_SIMULTANEOUS_ACCESS: Dword = 0x0FAF;
pub const TAG_IFD_POLLING_THREAD_KILLABLE: Dword = 0x0FB1;
pub const TAG_IFD_STOP_POLLING_THREAD: Dword = 0x0FB2;
pub const TAG_IFD_POLLING_THREAD_WITH_TIMEOUT: Dword = 0x0FB3;

/// SCARD_ATTR_VALUE(SCARD_CLASS_ICC_STATE, 0x0303): the ATR, as clients ask for it.
pub const SCARD_ATTR_ATR_STRING: Dword = 0x0009_0303;
/// SCARD_ATTR_VALUE(SCARD_CLASS_VENDOR_INFO, 0x0100 / 0x0101 / 0x0102).
pub const SCARD_ATTR_VENDOR_NAME: Dword = 0x0001_0100;
pub const SCARD_ATTR_VENDOR_IFD_TYPE: Dword = 0x0001_0101;
pub const SCARD_ATTR_VENDOR_IFD_VERSION: Dword = 0x0001_0102;
/// SCARD_ATTR_VALUE(SCARD_CLASS_VENDOR_INFO, 0x0103).
pub const SCARD_ATTR_VENDOR_IFD_SERIAL_NO: Dword = 0x0001_0103;
/// SCARD_ATTR_VALUE(SCARD_CLASS_COMMUNICATIONS, 0x0110): 0xDDDDCCCC, channel type and
/// number.
pub const SCARD_ATTR_CHANNEL_ID: Dword = 0x0002_0110;
/// SCARD_ATTR_VALUE(SCARD_CLASS_ICC_STATE, 0x0300 / 0x0301 / 0x0304).
pub const SCARD_ATTR_ICC_PRESENCE: Dword = 0x0009_0300;
pub const SCARD_ATTR_ICC_INTERFACE_STATUS: Dword = 0x0009_0301;
pub const SCARD_ATTR_ICC_TYPE_PER_ATR: Dword = 0x0009_0304;
/// SCARD_ATTR_VALUE(SCARD_CLASS_IFD_PROTOCOL, 0x0201).
pub const SCARD_ATTR_CURRENT_PROTOCOL_TYPE: Dword = 0x0008_0201;
/// SCARD_ATTR_VALUE(SCARD_CLASS_COMMUNICATIONS, 0xA007): largest message to the card.
pub const SCARD_ATTR_MAXINPUT: Dword = 0x0007_A007;

/// A vendor-defined channel type (PC/SC part 3: 0xF0 to 0xFF): a TCP port.
pub const CHANNEL_TYPE_TCP: Dword = 0x00F0;

const fn scard_ctl_code(code: Dword) -> Dword {
    0x4200_0000 + code
}

pub const CM_IOCTL_GET_FEATURE_REQUEST: Dword = scard_ctl_code(3400);
/// The same request with Windows' SCARD_CTL_CODE(3400) (FILE_DEVICE_SMARTCARD << 16 |
/// 3400 << 2), as RDP redirection (FreeRDP, Windows guests) passes it through.
pub const CM_IOCTL_GET_FEATURE_REQUEST_WINDOWS: Dword = 0x0031_0000 | (3400 << 2);
pub const FEATURE_GET_TLV_PROPERTIES: u8 = 0x12;
/// The control code we give FEATURE_GET_TLV_PROPERTIES (libccid's convention).
pub const IOCTL_FEATURE_GET_TLV_PROPERTIES: Dword = scard_ctl_code(0x0033_0000 + 0x12);
pub const PCSCV2_PART10_PROPERTY_B_PPDU_SUPPORT: u8 = 0x09;
pub const PCSCV2_PART10_PROPERTY_DW_MAX_APDU_DATA_SIZE: u8 = 0x0A;
pub const PCSCV2_PART10_PROPERTY_W_ID_VENDOR: u8 = 0x0B;
pub const PCSCV2_PART10_PROPERTY_W_ID_PRODUCT: u8 = 0x0C;

pub const FEATURE_VERIFY_PIN_DIRECT: u8 = 0x06;
pub const FEATURE_MODIFY_PIN_DIRECT: u8 = 0x07;
/// The control codes we give the PIN features (libccid's convention).
pub const IOCTL_FEATURE_VERIFY_PIN_DIRECT: Dword = scard_ctl_code(0x0033_0000 + 0x06);
pub const IOCTL_FEATURE_MODIFY_PIN_DIRECT: Dword = scard_ctl_code(0x0033_0000 + 0x07);
/// TLV properties of a PIN pad (pcsc-lite's reader.h, PCSCv2_PART10_PROPERTY_*).
pub const PCSCV2_PART10_PROPERTY_W_LCD_LAYOUT: u8 = 0x01;
pub const PCSCV2_PART10_PROPERTY_B_ENTRY_VALIDATION_CONDITION: u8 = 0x02;
pub const PCSCV2_PART10_PROPERTY_B_TIMEOUT2: u8 = 0x03;
pub const PCSCV2_PART10_PROPERTY_B_MIN_PIN_SIZE: u8 = 0x06;
pub const PCSCV2_PART10_PROPERTY_B_MAX_PIN_SIZE: u8 = 0x07;
