"""Build settings pyproject.toml cannot hold: two optional C extensions.

worker._jpegpart decodes only the part of an MJPEG frame around the face, with the system's
libjpeg-turbo (Debian/Ubuntu: libjpeg-dev or libjpeg62-turbo-dev, and a C compiler).
model._zscore z-scores NBHRnet's face crops (model.nbhrnet.normalise_window) and needs only a
C compiler. Where either is missing the build says so and goes on without the extension; nbhr
then decodes whole frames with OpenCV, or z-scores with OpenCV.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "worker._jpegpart",
            ["worker/_jpegpart.c"],
            libraries=["jpeg"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "model._zscore",
            ["model/_zscore.c"],
            # -O3: GCC vectorises loops only from -O3 (or with -ftree-vectorize).
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
