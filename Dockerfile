# Worker/CLI image: the nbhr package and its runtime dependencies (no torch).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY nbhr ./nbhr
COPY worker ./worker
COPY scheduler ./scheduler
COPY model ./model
COPY db ./db
COPY training ./training
RUN pip install .
RUN useradd --create-home nbhr
USER nbhr
ENTRYPOINT ["nbhr"]
CMD ["--help"]
