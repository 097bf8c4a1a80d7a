// The Go client's module path. The project builds and tests it offline in GOPATH mode
// (go.sh), where this file is not read; see README.md for a module build.
module dispatch.example/client

go 1.19

require (
	github.com/golang/protobuf v1.5.2
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
