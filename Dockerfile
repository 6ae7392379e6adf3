# Multi-stage build of the imageguard binary into a distroless, non-root image.
# docker build -t imageguard:dev .   (make docker-build)
FROM golang:1.26 AS build
WORKDIR /src
# Trivy v0.74 uses encoding/json/v2, an experiment on Go 1.26.
ENV GOEXPERIMENT=jsonv2 CGO_ENABLED=0 GOWORK=off
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY internal/ internal/
RUN go build -trimpath -ldflags "-s -w" -o /out/imageguard ./cmd/imageguard

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/imageguard /imageguard
USER 65532:65532
ENTRYPOINT ["/imageguard"]
CMD ["controller"]
