//! The card's file system: a tree of dedicated files (DFs) holding transparent
//! elementary files (EFs), the built-in one, and loading one from a directory.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// File identifier of the master file.
pub const MF_FID: u16 = 0x3F00;

/// Largest EF: READ BINARY's 15-bit offset reaches every byte.
pub const MAX_EF_SIZE: usize = 0x8000;

/// How deep `--fs` directories may nest below the MF.
pub const MAX_DEPTH: usize = 8;

/// The AID of the built-in application DF 5000: `F0` starts a proprietary,
/// unregistered AID (ISO/IEC 7816-5), followed by "vpcd" and 01.
pub const DEFAULT_AID: [u8; 6] = [0xF0, 0x76, 0x70, 0x63, 0x64, 0x01];

/// Contents of EF 5001 in the built-in file system.
pub const HELLO: &[u8] = b"Hello from vpcd-vicc";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Df(Df),
    Ef(Ef),
}

impl Node {
    pub fn fid(&self) -> u16 {
        match self {
            Node::Df(df) => df.fid,
            Node::Ef(ef) => ef.fid,
        }
    }
}

/// A dedicated file: a directory, optionally with a DF name (AID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Df {
    pub fid: u16,
    pub name: Option<Vec<u8>>,
    pub children: Vec<Node>,
}

/// A transparent elementary file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ef {
    pub fid: u16,
    pub data: Vec<u8>,
}

impl Df {
    /// The MF with no files.
    #[cfg(test)]
    pub fn empty_mf() -> Df {
        Df {
            fid: MF_FID,
            name: None,
            children: vec![],
        }
    }

    /// The built-in file system:
    ///
    /// ```text
    /// 3F00 MF
    /// ├── 2F00 EF.DIR   one application template for DF 5000
    /// ├── 2F01 EF.ATR   card capabilities and extended length information
    /// └── 5000 DF       name F0 76 70 63 64 01
    ///     └── 5001 EF   "Hello from vpcd-vicc"
    /// ```
    pub fn builtin() -> Df {
        let label = b"vpcd-vicc";
        // 61 { 4F AID, 50 label }
        let mut app = vec![0x4F, DEFAULT_AID.len() as u8];
        app.extend_from_slice(&DEFAULT_AID);
        app.extend_from_slice(&[0x50, label.len() as u8]);
        app.extend_from_slice(label);
        let mut ef_dir = vec![0x61, app.len() as u8];
        ef_dir.extend_from_slice(&app);
        // 47 card capabilities (as in the ATR); 7F66 extended length information:
        // at most 65526 command data bytes (an extended case 4 APDU in one vpcd frame)
        // and 65533 response data bytes (plus SW1 SW2 in one frame).
        let ef_atr = vec![
            0x47, 0x03, 0x90, 0x01, 0x40, 0x7F, 0x66, 0x08, 0x02, 0x02, 0xFF, 0xF6, 0x02, 0x02,
            0xFF, 0xFD,
        ];
        Df {
            fid: MF_FID,
            name: None,
            children: vec![
                Node::Ef(Ef {
                    fid: 0x2F00,
                    data: ef_dir,
                }),
                Node::Ef(Ef {
                    fid: 0x2F01,
                    data: ef_atr,
                }),
                Node::Df(Df {
                    fid: 0x5000,
                    name: Some(DEFAULT_AID.to_vec()),
                    children: vec![Node::Ef(Ef {
                        fid: 0x5001,
                        data: HELLO.to_vec(),
                    })],
                }),
            ],
        }
    }

    pub fn child(&self, fid: u16) -> Option<(usize, &Node)> {
        self.children
            .iter()
            .enumerate()
            .find(|(_, n)| n.fid() == fid)
    }
}

/// Why a directory could not be loaded as a file system.
#[derive(Debug)]
pub enum LoadError {
    Io(PathBuf, io::Error),
    TooLarge(PathBuf, u64),
    Duplicate(PathBuf),
    TooDeep(PathBuf),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            LoadError::TooLarge(p, n) => write!(
                f,
                "{}: {n} bytes is more than an EF can hold ({MAX_EF_SIZE})",
                p.display()
            ),
            LoadError::Duplicate(p) => {
                write!(f, "{}: file identifier used twice in one DF", p.display())
            }
            LoadError::TooDeep(p) => {
                write!(f, "{}: DFs nest deeper than {MAX_DEPTH}", p.display())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Loads a file system from a directory: each file `DIR/XXXX` (four hex digits) is a
/// transparent EF in the MF, each subdirectory `DIR/XXXX/` a DF, loaded the same way.
/// Entries with other names, and the reserved identifiers 3F00 and FFFF, are left out
/// and returned so that the caller can mention them.
pub fn load_dir(dir: &Path) -> Result<(Df, Vec<PathBuf>), LoadError> {
    let mut skipped = vec![];
    let children = load_children(dir, 0, &mut skipped)?;
    Ok((
        Df {
            fid: MF_FID,
            name: None,
            children,
        },
        skipped,
    ))
}

fn load_children(
    dir: &Path,
    depth: usize,
    skipped: &mut Vec<PathBuf>,
) -> Result<Vec<Node>, LoadError> {
    if depth > MAX_DEPTH {
        return Err(LoadError::TooDeep(dir.to_owned()));
    }
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |e| LoadError::Io(p, e)
    };
    let mut entries = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    entries.sort();
    let mut children: Vec<Node> = vec![];
    for path in entries {
        let fid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_fid)
            .filter(|fid| *fid != MF_FID && *fid != 0xFFFF);
        let Some(fid) = fid else {
            skipped.push(path);
            continue;
        };
        if children.iter().any(|c| c.fid() == fid) {
            return Err(LoadError::Duplicate(path));
        }
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            let grandchildren = load_children(&path, depth + 1, skipped)?;
            children.push(Node::Df(Df {
                fid,
                name: None,
                children: grandchildren,
            }));
        } else if meta.is_file() {
            if meta.len() > MAX_EF_SIZE as u64 {
                return Err(LoadError::TooLarge(path, meta.len()));
            }
            let data = fs::read(&path).map_err(io_err(&path))?;
            if data.len() > MAX_EF_SIZE {
                return Err(LoadError::TooLarge(path, data.len() as u64));
            }
            children.push(Node::Ef(Ef { fid, data }));
        } else {
            skipped.push(path);
        }
    }
    Ok(children)
}

/// `"2F00"` (either case) to 0x2F00; anything but exactly four hex digits to `None`.
pub fn parse_fid(name: &str) -> Option<u16> {
    if name.len() == 4 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        u16::from_str_radix(name, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("vpcd-vicc-fs-test-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn fids() {
        assert_eq!(parse_fid("2F00"), Some(0x2F00));
        assert_eq!(parse_fid("2f0a"), Some(0x2F0A));
        assert_eq!(parse_fid("2F0"), None);
        assert_eq!(parse_fid("2F000"), None);
        assert_eq!(parse_fid("+F00"), None);
        assert_eq!(parse_fid("2F00.bin"), None);
    }

    #[test]
    fn builtin_layout() {
        let mf = Df::builtin();
        assert_eq!(mf.fid, MF_FID);
        let Some((_, Node::Df(app))) = mf.child(0x5000) else {
            panic!("no DF 5000")
        };
        assert_eq!(app.name.as_deref(), Some(&DEFAULT_AID[..]));
        assert!(matches!(app.child(0x5001), Some((_, Node::Ef(ef))) if ef.data == HELLO));
        let Some((_, Node::Ef(dir))) = mf.child(0x2F00) else {
            panic!("no EF.DIR")
        };
        assert_eq!(dir.data[0], 0x61);
        assert_eq!(usize::from(dir.data[1]) + 2, dir.data.len());
        assert!(matches!(mf.child(0x2F01), Some((_, Node::Ef(_)))));
    }

    #[test]
    fn loads_a_directory() {
        let t = temp_dir();
        fs::write(t.path().join("2F00"), [0x61, 0x00]).unwrap();
        fs::write(t.path().join("README"), "not a file id").unwrap();
        fs::write(t.path().join("3F00"), "reserved").unwrap();
        fs::create_dir(t.path().join("5000")).unwrap();
        fs::write(t.path().join("5000").join("5001"), "inner").unwrap();
        fs::create_dir(t.path().join("5000").join("5100")).unwrap();
        let (mf, skipped) = load_dir(t.path()).unwrap();
        assert_eq!(
            mf,
            Df {
                fid: MF_FID,
                name: None,
                children: vec![
                    Node::Ef(Ef {
                        fid: 0x2F00,
                        data: vec![0x61, 0x00]
                    }),
                    Node::Df(Df {
                        fid: 0x5000,
                        name: None,
                        children: vec![
                            Node::Ef(Ef {
                                fid: 0x5001,
                                data: b"inner".to_vec()
                            }),
                            Node::Df(Df {
                                fid: 0x5100,
                                name: None,
                                children: vec![]
                            }),
                        ],
                    }),
                ],
            }
        );
        let mut names: Vec<_> = skipped
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["3F00", "README"]);
    }

    #[test]
    fn load_errors() {
        let t = temp_dir();
        assert!(matches!(
            load_dir(&t.path().join("missing")),
            Err(LoadError::Io(..))
        ));
        fs::write(t.path().join("2f00"), "a").unwrap();
        fs::write(t.path().join("2F00"), "b").unwrap();
        let e = load_dir(t.path()).unwrap_err();
        assert!(matches!(e, LoadError::Duplicate(_)), "{e}");
        fs::remove_file(t.path().join("2f00")).unwrap();
        fs::write(t.path().join("2F01"), vec![0u8; MAX_EF_SIZE + 1]).unwrap();
        let e = load_dir(t.path()).unwrap_err();
        assert!(matches!(e, LoadError::TooLarge(_, _)), "{e}");
        fs::write(t.path().join("2F01"), vec![0u8; MAX_EF_SIZE]).unwrap();
        assert_eq!(load_dir(t.path()).unwrap().0.children.len(), 2);
    }
}
