//! Getting images in. For now: image folders on the local file system.

mod folder;

pub use folder::{list_images, IMAGE_EXTENSIONS};
