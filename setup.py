"""Build settings pyproject.toml cannot hold: the optional C extension worker._jpegpart.

It decodes only the part of an MJPEG frame around the face, with the system's libjpeg-turbo
(Debian/Ubuntu: libjpeg-dev or libjpeg62-turbo-dev, and a C compiler). Where either is
missing the build says so and goes on without it; nbhr then decodes whole frames with OpenCV.
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
        )
    ]
)
