package dispatch

import (
	"context"
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// DefaultTimeout bounds each unary call whose context has no earlier deadline
// (WithTimeout changes it; 0 turns it off). Watches are never bounded by it.
const DefaultTimeout = 30 * time.Second

// An Option configures Dial.
type Option func(*settings)

type settings struct {
	insecure    bool
	tls         *tls.Config
	token       string
	timeout     time.Duration
	block       bool
	dialOptions []grpc.DialOption
}

// WithInsecure connects in plaintext (a server on loopback, or --insecure).
// Without it (or WithTLS), Dial uses TLS with the system's root certificates.
func WithInsecure() Option {
	return func(s *settings) { s.insecure, s.tls = true, nil }
}

// WithTLS connects with TLS configured by cfg: RootCAs for a private CA,
// Certificates for a mutual-TLS client identity. A nil cfg uses the system's
// root certificates.
func WithTLS(cfg *tls.Config) Option {
	return func(s *settings) {
		s.insecure = false
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		s.tls = cfg
	}
}

// WithToken sends "authorization: Bearer <token>" with every call. Over
// plaintext (WithInsecure) the token is sent too: the server accepts plaintext
// only on loopback or when started with --insecure.
func WithToken(token string) Option {
	return func(s *settings) { s.token = token }
}

// WithTimeout bounds each unary call whose context has no earlier deadline;
// 0 means no bound. The default is DefaultTimeout.
func WithTimeout(d time.Duration) Option {
	return func(s *settings) { s.timeout = d }
}

// WithBlock makes Dial wait until the connection is up (or its context ends).
// Without it Dial returns at once and connects on the first call.
func WithBlock() Option {
	return func(s *settings) { s.block = true }
}

// WithDialOptions passes options to grpc.DialContext as they are (interceptors,
// keepalive, message sizes, ...), after the ones this package sets.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, opts...) }
}

// bearer is the per-call credential of WithToken.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

func (s *settings) grpcOptions() []grpc.DialOption {
	var out []grpc.DialOption
	if s.insecure {
		out = append(out, grpc.WithInsecure())
	} else {
		cfg := s.tls
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		out = append(out, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	if s.token != "" {
		out = append(out, grpc.WithPerRPCCredentials(bearer{token: s.token, secure: !s.insecure}))
	}
	if s.block {
		out = append(out, grpc.WithBlock())
	}
	return append(out, s.dialOptions...)
}
