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
/// SCARD_ATTR_VALUE(SCARD_CLASS_COMMUNICATIONS, 0xA007): largest message to the card.
pub const SCARD_ATTR_MAXINPUT: Dword = 0x0007_A007;

const fn scard_ctl_code(code: Dword) -> Dword {
    0x4200_0000 + code
}

pub const CM_IOCTL_GET_FEATURE_REQUEST: Dword = scard_ctl_code(3400);
pub const FEATURE_GET_TLV_PROPERTIES: u8 = 0x12;
/// The control code we give FEATURE_GET_TLV_PROPERTIES (libccid's convention).
pub const IOCTL_FEATURE_GET_TLV_PROPERTIES: Dword = scard_ctl_code(0x0033_0000 + 0x12);
pub const PCSCV2_PART10_PROPERTY_DW_MAX_APDU_DATA_SIZE: u8 = 10;
