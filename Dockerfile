FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PYTHONPATH=/app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --system pushline && chown -R pushline /app
USER pushline
EXPOSE 8000
CMD ["python", "-m", "pushline.cli", "web"]
