package main

// `orca-interop serve`: dockercoins.v1.Rng/Generate in grpc-go, with a
// per-call ORCA report on every call and gRPC health.

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/orca"
	"google.golang.org/grpc/status"
)

// The load every Generate reports (orca.CallMetricsRecorder).
type load struct {
	qps, utilization, cpu, eps float64
}

type rngServer struct{ load load }

// rngHandler is the HandlerType of the hand-written ServiceDesc: any value.
type rngHandler interface{}

var rngServiceDesc = grpc.ServiceDesc{
	ServiceName: rngService,
	HandlerType: (*rngHandler)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Generate",
		Handler:    generateHandler,
	}},
	// GenerateStream is not served here: its calls get UNIMPLEMENTED, as
	// every method of every other service.
	Streams:  []grpc.StreamDesc{},
	Metadata: "dockercoins/v1/rng.proto",
}

// generateHandler is what protoc-gen-go-grpc would write, with []byte for the
// messages; it goes through the interceptors, ORCA's among them.
func generateHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	var in []byte
	if err := dec(&in); err != nil {
		return nil, err
	}
	s := srv.(*rngServer)
	if interceptor == nil {
		return s.generate(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: generateMethod}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return s.generate(ctx, req.([]byte))
	})
}

func (s *rngServer) generate(ctx context.Context, req []byte) (any, error) {
	// The report first, so that a refused call carries one too.
	if rec := orca.CallMetricsRecorderFromContext(ctx); rec != nil {
		rec.SetApplicationUtilization(s.load.utilization)
		rec.SetCPUUtilization(s.load.cpu)
		rec.SetQPS(s.load.qps)
		rec.SetEPS(s.load.eps)
	}
	size, err := decodeGenerateRequest(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "GenerateRequest: %v", err)
	}
	if size < 1 || size > maxSize {
		return nil, status.Errorf(codes.InvalidArgument, "size must be between 1 and %d, not %d", maxSize, size)
	}
	data := make([]byte, size)
	rand.Read(data) // never fails (crypto/rand, Go 1.24+)
	return encodeGenerateResponse(data), nil
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (port 0: a free one)")
	var l load
	fs.Float64Var(&l.qps, "qps", 0, "rps_fractional of every report (required)")
	fs.Float64Var(&l.utilization, "utilization", 0, "application_utilization of every report (required)")
	fs.Float64Var(&l.cpu, "cpu", 0, "cpu_utilization of every report")
	fs.Float64Var(&l.eps, "eps", 0, "eps of every report")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Print(usage)
			return 0
		}
		return badFlags("serve", "%v", err)
	}
	if fs.NArg() > 0 {
		return badFlags("serve", "unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, name := range []string{"qps", "utilization"} {
		if !set[name] {
			return badFlags("serve", "--%s is required", name)
		}
	}
	for name, v := range map[string]float64{"qps": l.qps, "utilization": l.utilization, "cpu": l.cpu, "eps": l.eps} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return badFlags("serve", "--%s must be a finite number >= 0, not %v", name, v)
		}
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "orca-interop serve: cannot listen on %s: %v\n", *listen, err)
		return 1
	}
	// CallMetricsServerOption first, as its documentation asks.
	srv := grpc.NewServer(
		orca.CallMetricsServerOption(nil),
		grpc.ForceServerCodec(rawCodec{}),
	)
	srv.RegisterService(&rngServiceDesc, &rngServer{load: l})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(rngService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	// os.Stdout is not buffered in Go: the line is out when Fprintf returns.
	fmt.Fprintf(os.Stdout, "listening on %s\n", lis.Addr())

	select {
	case err := <-served:
		fmt.Fprintf(os.Stderr, "orca-interop serve: %v\n", err)
		return 1
	case sig := <-sigs:
		fmt.Fprintf(os.Stderr, "orca-interop serve: %v, stopping\n", sig)
	}
	hs.Shutdown() // NOT_SERVING for the health watchers, first
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		fmt.Fprintln(os.Stderr, "orca-interop serve: calls still running after 2 s, closing them")
		srv.Stop()
	}
	return 0
}
