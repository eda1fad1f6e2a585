"""File-level jobs over folders of images: blur-swapped datasets (:mod:`.swap`) and deblurring
(:mod:`.deblur_files`). Resumable, atomic, and never writing into their inputs."""
