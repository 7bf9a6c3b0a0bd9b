# syntax=docker/dockerfile:1
# Static, non-root image of the worker. Build: docker build --build-arg BUILD_ID=$(git rev-parse --short HEAD) .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG BUILD_ID=dev
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.buildID=${BUILD_ID}" -o /out/worker ./cmd/worker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/worker /worker
# The embedded store needs a writable directory; on Cloud Run use
# STATE_STORE=firestore and PREDICTION_SINK=bigquery instead.
ENV DATA_DIR=/tmp/predworker
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/worker"]
CMD ["serve"]
