// orca-interop: grpc-go on the other side of the wire, for the integration
// tests that check dockercoins' ORCA load reports (gRFC A51) and its
// weighted_round_robin policy (gRFC A58) against the reference implementation.
//
//	orca-interop serve  --listen 127.0.0.1:0 --qps 300 --utilization 0.5 [--cpu 0.2] [--eps 0]
//	    A dockercoins.v1.Rng server (Generate only; other methods UNIMPLEMENTED)
//	    in grpc-go, with gRPC health, that attaches a per-call ORCA report
//	    (orca.CallMetricsServerOption) with these values to every Generate.
//	    Prints one line "listening on HOST:PORT" on stdout once it listens,
//	    then serves until SIGTERM or SIGINT (GracefulStop, at most 2 s; exit 0).
//
//	orca-interop client --targets HOST:PORT,HOST:PORT,... [--seconds 6] [--warmup 2]
//	                    [--concurrency 8] [--size 8] [--blackout 0s] [--update 0.1s]
//	    One grpc-go ClientConn over every target with the weighted_round_robin
//	    policy (per-call reports, blackoutPeriod and weightUpdatePeriod as given)
//	    that calls Generate from `concurrency` goroutines for warmup+seconds,
//	    then prints one JSON object on stdout: the calls each target served
//	    after the warmup, their shares, the failures, and the last ORCA report
//	    each target sent (the endpoint-load-metrics-bin trailer, decoded).
//	    Exit 0 when it ran (the caller judges the numbers), 1 when no call
//	    succeeded at all, 2 on bad flags. Diagnostics go to stderr.
//
// It is its own Go module (standard library, grpc-go and grpc-go's own
// dependencies), with no generated code: GenerateRequest and GenerateResponse
// are encoded by hand with protowire and carried by a pass-through codec.
//
// Built by tests/build-stack-tools.sh into target/stack-tools/orca-interop
// (rebuilt when go.mod, go.sum or a .go file here changes); by hand:
//
//	cd tests/orca-interop && go build -trimpath -o ../../target/stack-tools/orca-interop .
package main

import (
	"fmt"
	"os"
)

const usage = `usage:
  orca-interop serve  --listen 127.0.0.1:0 --qps QPS --utilization U [--cpu C] [--eps E]
  orca-interop client --targets HOST:PORT,... [--seconds 6] [--warmup 2] [--concurrency 8]
                      [--size 8] [--blackout 0s] [--update 0.1s]
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "client":
		os.Exit(client(os.Args[2:]))
	case "-h", "-help", "--help", "help":
		fmt.Fprint(os.Stdout, usage)
	default:
		fmt.Fprintf(os.Stderr, "orca-interop: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}

// badFlags says what is wrong with the command line and returns exit code 2.
func badFlags(cmd, format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "orca-interop %s: %s\n%s", cmd, fmt.Sprintf(format, args...), usage)
	return 2
}
