# Worker/CLI image: the nbhr package and its runtime dependencies (no torch).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY nbhr ./nbhr
COPY worker ./worker
COPY scheduler ./scheduler
COPY model ./model
COPY db ./db
COPY training ./training
# A compiler and libjpeg's headers build worker._jpegpart (MJPEG frames decoded only around
# the face) and model._zscore (NBHRnet's input z-scored), then go; libjpeg itself stays for
# the first to run.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libjpeg62-turbo-dev libjpeg62-turbo \
    && pip install . \
    && (cd / && python -c "import worker._jpegpart, model._zscore") \
    && apt-get purge -y --auto-remove gcc libc6-dev libjpeg62-turbo-dev \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home nbhr
USER nbhr
ENTRYPOINT ["nbhr"]
CMD ["--help"]
