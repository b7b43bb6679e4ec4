# Wheels are built where a compiler is (gunicorn_h1c ships as source), installed where none is.
FROM python:3.11 AS wheels
COPY requirements.txt .
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PYTHONPATH=/app
COPY requirements.txt .
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels -r requirements.txt && rm -rf /wheels
COPY . .
RUN useradd --system pushline && chown -R pushline /app
USER pushline
EXPOSE 8000
CMD ["python", "-m", "pushline.cli", "web"]
