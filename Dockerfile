# renkei: one static-ish binary on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin renkei

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/renkei /usr/local/bin/renkei
COPY config /app/config
COPY templates /app/templates
WORKDIR /app
EXPOSE 8080
ENTRYPOINT ["renkei"]
CMD ["serve"]
