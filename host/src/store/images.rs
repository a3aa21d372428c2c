//! Uploaded images: the original bytes, a thumbnail and a row of metadata.

use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, ImageFormat, RgbaImage};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, StoreError, new_id, now_unix, remove_path};
use crate::config::UploadConfig;
use crate::fsutil::write_atomic;
use crate::imageio;

/// The maximum side of a thumbnail, in pixels, which stays sharp in a
/// 128-pixel grid cell on a high-density screen.
pub const THUMBNAIL_SIZE: u32 = 256;

/// The maximum length of a stored file name, in characters. Longer names
/// are cut.
const MAX_NAME_CHARS: usize = 200;

/// An uploaded image, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    pub id: String,
    /// The file name the user gave, without folders.
    pub name: String,
    /// The size after the EXIF orientation is applied.
    pub width: u32,
    pub height: u32,
    /// The format detected from the bytes: `png`, `jpeg`, `webp`, `gif`,
    /// `bmp` or `tiff`.
    pub format: String,
    /// The size of the original file.
    pub bytes: u64,
    pub created_unix: u64,
}

impl ImageRecord {
    /// Returns the MIME type of the original file.
    pub fn content_type(&self) -> &'static str {
        match self.format.as_str() {
            "png" => "image/png",
            "jpeg" => "image/jpeg",
            "webp" => "image/webp",
            "gif" => "image/gif",
            "bmp" => "image/bmp",
            "tiff" => "image/tiff",
            _ => "application/octet-stream",
        }
    }

    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<ImageRecord> {
        Ok(ImageRecord {
            id: row.get("id")?,
            name: row.get("name")?,
            width: row.get("width")?,
            height: row.get("height")?,
            format: row.get("format")?,
            bytes: row.get("bytes")?,
            created_unix: row.get("created_unix")?,
        })
    }
}

pub(super) const IMAGE_COLUMNS: &str = "id, name, width, height, format, bytes, created_unix";

impl Store {
    /// Decodes and stores an upload for `session`.
    ///
    /// The original bytes are kept as they came, with a PNG thumbnail.
    /// `file_name` is only for display: the format is detected from the
    /// bytes, and folders in the name are dropped.
    ///
    /// # Errors
    ///
    /// [`StoreError::Image`] for a file that breaks `limits` or is not a
    /// decodable image, in which case nothing was written; I/O and database
    /// errors otherwise.
    pub fn add_image(
        &self,
        session: &str,
        file_name: &str,
        bytes: &[u8],
        limits: &UploadConfig,
    ) -> Result<ImageRecord, StoreError> {
        let name = display_name(file_name);
        let decoded = imageio::decode(bytes, limits).map_err(|error| error.named(&name))?;
        let thumbnail = encode_thumbnail(decoded.rgba)?;

        let record = ImageRecord {
            id: new_id(),
            name,
            width: thumbnail.source_width,
            height: thumbnail.source_height,
            format: decoded.format.to_owned(),
            bytes: bytes.len() as u64,
            created_unix: now_unix(),
        };
        let original = self.original_path(&record.id, &record.format);
        let thumb = self.thumbnail_path(&record.id);
        write_atomic(&original, bytes)
            .map_err(|error| StoreError::io("write image", &original, error))?;
        if let Err(error) = write_atomic(&thumb, &thumbnail.png) {
            remove_path(&original);
            return Err(StoreError::io("write thumbnail", &thumb, error));
        }

        if let Err(error) = self.insert_image(session, &record) {
            remove_path(&original);
            remove_path(&thumb);
            return Err(error);
        }
        tracing::debug!(image = %record.id, format = %record.format, bytes = record.bytes, "stored upload");
        Ok(record)
    }

    fn insert_image(&self, session: &str, record: &ImageRecord) -> Result<(), StoreError> {
        self.connection().execute(
            "INSERT INTO images (id, session, name, width, height, format, bytes, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                record.id,
                session,
                record.name,
                record.width,
                record.height,
                record.format,
                record.bytes,
                record.created_unix
            ],
        )?;
        Ok(())
    }

    /// Lists the images of `session`, oldest first.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn list_images(&self, session: &str) -> Result<Vec<ImageRecord>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE session = ?1
             ORDER BY created_unix, rowid"
        ))?;
        let images = statement
            .query_map([session], ImageRecord::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(images)
    }

    /// The metadata of one image of `session`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when `session` has no image `id`.
    pub fn image(&self, session: &str, id: &str) -> Result<ImageRecord, StoreError> {
        self.connection()
            .query_row(
                &format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?1 AND session = ?2"),
                [id, session],
                ImageRecord::from_row,
            )
            .optional()?
            .ok_or_else(|| image_not_found(id))
    }

    /// Decodes a stored image, EXIF orientation applied.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown id; I/O errors; an image that
    /// no longer decodes, which means the file was changed on disk.
    pub fn load_image(
        &self,
        session: &str,
        id: &str,
    ) -> Result<(ImageRecord, RgbaImage), StoreError> {
        let (record, bytes) = self.image_bytes(session, id)?;
        // The file passed the limits when it was uploaded; limits of exactly
        // its own size keep a file swapped on disk from asking for more.
        let limits = UploadConfig {
            max_bytes: record.bytes,
            max_pixels: u64::from(record.width) * u64::from(record.height),
            max_files: 1,
        };
        let decoded = imageio::decode(&bytes, &limits).map_err(|error| {
            StoreError::Corrupt(format!(
                "stored image `{}` no longer decodes: {}",
                record.id,
                error.named(&record.name)
            ))
        })?;
        Ok((record, decoded.rgba))
    }

    /// The original bytes of an image as uploaded.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown id; I/O errors.
    pub fn image_bytes(
        &self,
        session: &str,
        id: &str,
    ) -> Result<(ImageRecord, Vec<u8>), StoreError> {
        let record = self.image(session, id)?;
        let path = self.original_path(&record.id, &record.format);
        let bytes =
            std::fs::read(&path).map_err(|error| StoreError::io("read image", &path, error))?;
        Ok((record, bytes))
    }

    /// A PNG thumbnail of an image, at most [`THUMBNAIL_SIZE`] pixels on its
    /// longer side.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown id; I/O errors.
    pub fn thumbnail(&self, session: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        let record = self.image(session, id)?;
        let path = self.thumbnail_path(&record.id);
        std::fs::read(&path).map_err(|error| StoreError::io("read thumbnail", &path, error))
    }

    /// Deletes an image and its files. Results of jobs that used it keep
    /// their own copy of the photo.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when `session` has no image `id`.
    pub fn delete_image(&self, session: &str, id: &str) -> Result<(), StoreError> {
        let record = self.image(session, id)?;
        let deleted = self.connection().execute(
            "DELETE FROM images WHERE id = ?1 AND session = ?2",
            [id, session],
        )?;
        if deleted == 0 {
            // Deleted by a concurrent request between the two queries.
            return Err(image_not_found(id));
        }
        self.remove_image_files(&record);
        Ok(())
    }

    pub(super) fn remove_image_files(&self, record: &ImageRecord) {
        remove_path(&self.original_path(&record.id, &record.format));
        remove_path(&self.thumbnail_path(&record.id));
    }

    pub(super) fn original_path(&self, id: &str, format: &str) -> PathBuf {
        self.inner.images_dir.join(format!("{id}.{format}"))
    }

    fn thumbnail_path(&self, id: &str) -> PathBuf {
        self.inner.images_dir.join(format!("{id}.thumb.png"))
    }
}

fn image_not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("image `{id}` not found in this session"))
}

/// The file name without folders (browsers may send `C:\fakepath\x.jpg`),
/// without control characters, and at most [`MAX_NAME_CHARS`] long.
pub(crate) fn display_name(file_name: &str) -> String {
    let base = file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(file_name)
        .trim();
    let name: String = base
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    if name.is_empty() {
        "image".to_owned()
    } else {
        name
    }
}

struct Thumbnail {
    png: Vec<u8>,
    source_width: u32,
    source_height: u32,
}

fn encode_thumbnail(rgba: RgbaImage) -> Result<Thumbnail, StoreError> {
    let (source_width, source_height) = rgba.dimensions();
    let image = DynamicImage::ImageRgba8(rgba);
    let small = if source_width.max(source_height) > THUMBNAIL_SIZE {
        image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    } else {
        image
    };
    let mut png = Cursor::new(Vec::new());
    small
        .write_to(&mut png, ImageFormat::Png)
        .map_err(|error| StoreError::Corrupt(format!("failed to encode a thumbnail: {error}")))?;
    Ok(Thumbnail {
        png: png.into_inner(),
        source_width,
        source_height,
    })
}

/// Lists the files under `dir`, for tests that check nothing was written.
#[cfg(test)]
pub(super) fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(files_under(&path));
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;
    use std::path::Path;

    const ALICE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BOB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbaImage::from_fn(width, height, |x, y| {
            Rgba([(x * 3) as u8, (y * 5) as u8, 128, 255])
        });
        let mut bytes = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(image)
            .write_to(&mut bytes, ImageFormat::Png)
            .expect("encode PNG");
        bytes.into_inner()
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir).expect("open store")
    }

    #[test]
    fn added_image_lists_loads_and_keeps_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let bytes = png(40, 30);
        let record = store
            .add_image(ALICE, "cat.png", &bytes, &UploadConfig::default())
            .expect("store a PNG");
        assert_eq!(record.name, "cat.png");
        assert_eq!((record.width, record.height), (40, 30));
        assert_eq!(record.format, "png");
        assert_eq!(record.bytes, bytes.len() as u64);

        assert_eq!(
            store.list_images(ALICE).expect("list"),
            vec![record.clone()]
        );
        assert_eq!(store.image(ALICE, &record.id).expect("metadata"), record);
        let (_, original) = store.image_bytes(ALICE, &record.id).expect("bytes");
        assert_eq!(original, bytes, "the original is kept byte for byte");
        let (_, pixels) = store.load_image(ALICE, &record.id).expect("decode");
        assert_eq!(pixels.dimensions(), (40, 30));
        assert_eq!(pixels.get_pixel(10, 20), &Rgba([30, 100, 128, 255]));
    }

    #[test]
    fn thumbnail_fits_the_thumbnail_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let record = store
            .add_image(ALICE, "wide.png", &png(600, 300), &UploadConfig::default())
            .expect("store");
        let thumb = store.thumbnail(ALICE, &record.id).expect("thumbnail");
        let decoded = image::load_from_memory(&thumb).expect("thumbnail is a PNG");
        assert_eq!((decoded.width(), decoded.height()), (256, 128));
    }

    #[test]
    fn other_session_sees_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let record = store
            .add_image(ALICE, "a.png", &png(4, 4), &UploadConfig::default())
            .expect("store");
        assert!(store.list_images(BOB).expect("list").is_empty());
        for result in [
            store.image(BOB, &record.id).map(drop),
            store.image_bytes(BOB, &record.id).map(drop),
            store.load_image(BOB, &record.id).map(drop),
            store.thumbnail(BOB, &record.id).map(drop),
            store.delete_image(BOB, &record.id),
        ] {
            assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
        }
        store
            .image(ALICE, &record.id)
            .expect("still there for its owner");
    }

    #[test]
    fn bad_upload_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let first_upload = store
            .add_image(ALICE, "ok.png", &png(4, 4), &UploadConfig::default())
            .expect("store a good image first");
        let before = files_under(dir.path().join("images").as_path());

        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        let error = store
            .add_image(ALICE, "half.png", &truncated, &UploadConfig::default())
            .expect_err("truncated PNG");
        assert!(
            error.to_string().starts_with("image `half.png` is corrupt"),
            "{error}"
        );
        let error = store
            .add_image(ALICE, "notes.txt", b"plain text", &UploadConfig::default())
            .expect_err("text file");
        assert!(matches!(error, StoreError::Image(_)), "{error}");

        assert_eq!(files_under(dir.path().join("images").as_path()), before);
        assert_eq!(store.list_images(ALICE).expect("list"), vec![first_upload]);
    }

    #[test]
    fn delete_removes_row_and_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let record = store
            .add_image(ALICE, "a.png", &png(4, 4), &UploadConfig::default())
            .expect("store");
        assert_eq!(files_under(&dir.path().join("images")).len(), 2);
        store.delete_image(ALICE, &record.id).expect("delete");
        assert!(files_under(&dir.path().join("images")).is_empty());
        let again = store.delete_image(ALICE, &record.id);
        assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
    }

    #[test]
    fn images_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = {
            let store = open(dir.path());
            store
                .add_image(ALICE, "a.png", &png(8, 8), &UploadConfig::default())
                .expect("store")
        };
        let store = open(dir.path());
        assert_eq!(
            store.list_images(ALICE).expect("list"),
            vec![record.clone()]
        );
        store
            .load_image(ALICE, &record.id)
            .expect("decode after reopen");
    }

    #[test]
    fn display_name_drops_folders_and_controls() {
        assert_eq!(display_name("C:\\fakepath\\cat.jpg"), "cat.jpg");
        assert_eq!(display_name("../../etc/passwd"), "passwd");
        assert_eq!(display_name("a\u{0}b\nc.png"), "abc.png");
        assert_eq!(display_name("   "), "image");
        assert_eq!(
            display_name(&"x".repeat(500)).chars().count(),
            MAX_NAME_CHARS
        );
    }
}
