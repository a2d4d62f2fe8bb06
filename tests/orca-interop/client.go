package main

// `orca-interop client`: grpc-go's weighted_round_robin over the targets, fed
// by their per-call ORCA reports; what it did, as one JSON object.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v3orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/weightedroundrobin" // registers weighted_round_robin
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/proto"
)

// The trailer of a per-call ORCA report (gRFC A51). grpc-go hands a -bin
// value over already base64-decoded (padded or not).
const orcaTrailer = "endpoint-load-metrics-bin"

// A call's own deadline.
const callTimeout = 5 * time.Second

type clientFlags struct {
	targets     []string
	seconds     float64
	warmup      float64
	concurrency int
	size        int
	blackout    time.Duration
	update      time.Duration
}

func parseClientFlags(args []string) (clientFlags, int) {
	var c clientFlags
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	targets := fs.String("targets", "", "HOST:PORT,HOST:PORT,... (required)")
	fs.Float64Var(&c.seconds, "seconds", 6, "seconds of counted calls, after the warmup")
	fs.Float64Var(&c.warmup, "warmup", 2, "seconds of calls not counted, first")
	fs.IntVar(&c.concurrency, "concurrency", 8, "goroutines calling Generate")
	fs.IntVar(&c.size, "size", 8, "GenerateRequest.size, 1 to 1048576")
	fs.DurationVar(&c.blackout, "blackout", 0, "weighted_round_robin blackoutPeriod")
	fs.DurationVar(&c.update, "update", 100*time.Millisecond, "weighted_round_robin weightUpdatePeriod (grpc-go raises it to 100ms at least)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Print(usage)
			return c, 0
		}
		return c, badFlags("client", "%v", err)
	}
	if fs.NArg() > 0 {
		return c, badFlags("client", "unexpected argument %q", fs.Arg(0))
	}
	seen := map[string]bool{}
	for _, t := range strings.Split(*targets, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		host, port, err := net.SplitHostPort(t)
		if err != nil || host == "" {
			return c, badFlags("client", "target %q is not HOST:PORT", t)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return c, badFlags("client", "target %q: the port must be a number from 1 to 65535", t)
		}
		if seen[t] {
			return c, badFlags("client", "target %q given twice", t)
		}
		seen[t] = true
		c.targets = append(c.targets, t)
	}
	switch {
	case len(c.targets) == 0:
		return c, badFlags("client", "--targets is required (HOST:PORT,HOST:PORT,...)")
	case !(c.seconds > 0) || math.IsInf(c.seconds, 0):
		return c, badFlags("client", "--seconds must be a number above 0, not %v", c.seconds)
	case !(c.warmup >= 0) || math.IsInf(c.warmup, 0):
		return c, badFlags("client", "--warmup must be a number >= 0, not %v", c.warmup)
	case c.concurrency < 1:
		return c, badFlags("client", "--concurrency must be at least 1, not %d", c.concurrency)
	case c.size < 1 || c.size > maxSize:
		return c, badFlags("client", "--size must be between 1 and %d, not %d", maxSize, c.size)
	case c.blackout < 0:
		return c, badFlags("client", "--blackout must not be negative, not %v", c.blackout)
	case c.update <= 0:
		return c, badFlags("client", "--update must be above 0, not %v", c.update)
	}
	return c, -1
}

// durationJSON writes d as a protobuf JSON Duration: "0s", "0.100s", "10s".
func durationJSON(d time.Duration) string {
	s := fmt.Sprintf("%d.%09d", d/time.Second, d%time.Second)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + "s"
}

// num is a float64 that is always valid JSON: a non-finite value (which no
// ORCA report should carry) is written as a string, "NaN", "+Inf" or "-Inf".
type num float64

func (n num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return json.Marshal(strconv.FormatFloat(f, 'g', -1, 64))
	}
	return json.Marshal(f)
}

type reportJSON struct {
	CPUUtilization         num            `json:"cpu_utilization"`
	MemUtilization         num            `json:"mem_utilization"`
	ApplicationUtilization num            `json:"application_utilization"`
	RpsFractional          num            `json:"rps_fractional"`
	Eps                    num            `json:"eps"`
	NamedMetrics           map[string]num `json:"named_metrics"`
	RequestCost            map[string]num `json:"request_cost"`
	Utilization            map[string]num `json:"utilization"`
}

func nums(m map[string]float64) map[string]num {
	out := make(map[string]num, len(m)) // {} rather than null when empty
	for k, v := range m {
		out[k] = num(v)
	}
	return out
}

func toReportJSON(r *v3orcapb.OrcaLoadReport) *reportJSON {
	return &reportJSON{
		CPUUtilization:         num(r.GetCpuUtilization()),
		MemUtilization:         num(r.GetMemUtilization()),
		ApplicationUtilization: num(r.GetApplicationUtilization()),
		RpsFractional:          num(r.GetRpsFractional()),
		Eps:                    num(r.GetEps()),
		NamedMetrics:           nums(r.GetNamedMetrics()),
		RequestCost:            nums(r.GetRequestCost()),
		Utilization:            nums(r.GetUtilization()),
	}
}

type resultJSON struct {
	Calls      map[string]int64       `json:"calls"`
	Share      map[string]num         `json:"share"`
	Errors     int64                  `json:"errors"`
	FirstError string                 `json:"first_error"`
	Reports    map[string]*reportJSON `json:"reports"`
	// Trailers named endpoint-load-metrics-bin that did not hold exactly one
	// OrcaLoadReport (grpc-go's own parser drops those: no weight from them).
	BadReports int64 `json:"bad_reports"`
}

// tally is what the callers found, under one lock.
type tally struct {
	mu         sync.Mutex
	byAddr     map[string]string // peer address -> target
	calls      map[string]int64  // counted successes by target
	succeeded  int64             // every success, the warmup's too
	errors     int64
	firstError string
	reports    map[string]*v3orcapb.OrcaLoadReport
	badReports int64
	firstBad   string
	strangers  map[string]bool // peers that are no target, said once
}

// peerTargets maps the addresses a peer can have to the target given: the
// target itself, and HOST resolved to its addresses.
func peerTargets(targets []string) map[string]string {
	m := map[string]string{}
	for _, t := range targets {
		m[t] = t
	}
	for _, t := range targets {
		host, port, _ := net.SplitHostPort(t)
		var ips []net.IP
		if ip := net.ParseIP(host); ip != nil {
			ips = []net.IP{ip}
		} else if found, err := net.LookupIP(host); err == nil {
			ips = found
		}
		for _, ip := range ips {
			if a := net.JoinHostPort(ip.String(), port); m[a] == "" {
				m[a] = t
			}
		}
	}
	return m
}

func (t *tally) target(p *peer.Peer) string {
	if p.Addr == nil {
		return ""
	}
	a := p.Addr.String()
	if tg, ok := t.byAddr[a]; ok {
		return tg
	}
	if !t.strangers[a] {
		t.strangers[a] = true
		fmt.Fprintf(os.Stderr, "orca-interop client: a call was served by %s, which is none of the targets\n", a)
	}
	return a
}

func (t *tally) record(p *peer.Peer, counted bool, callErr error, trailer metadata.MD) {
	t.mu.Lock()
	defer t.mu.Unlock()
	target := t.target(p)
	if vs := trailer.Get(orcaTrailer); len(vs) > 0 {
		r := new(v3orcapb.OrcaLoadReport)
		err := proto.Unmarshal([]byte(vs[len(vs)-1]), r)
		switch {
		case len(vs) > 1:
			err = fmt.Errorf("%d %s values in one trailer", len(vs), orcaTrailer)
		case err != nil:
			err = fmt.Errorf("%s is not an OrcaLoadReport: %v", orcaTrailer, err)
		}
		if err != nil {
			t.badReports++
			if t.firstBad == "" {
				t.firstBad = fmt.Sprintf("from %s: %v", target, err)
				fmt.Fprintf(os.Stderr, "orca-interop client: bad load report %s\n", t.firstBad)
			}
		} else if target != "" {
			t.reports[target] = r
		}
	}
	if callErr != nil {
		t.errors++
		if t.firstError == "" {
			t.firstError = callErr.Error()
		}
		return
	}
	t.succeeded++
	if counted {
		t.calls[target]++
	}
}

func client(args []string) int {
	c, code := parseClientFlags(args)
	if code >= 0 {
		return code
	}

	r := manual.NewBuilderWithScheme("orca-interop")
	endpoints := make([]resolver.Endpoint, len(c.targets))
	for i, t := range c.targets {
		endpoints[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: t}}}
	}
	r.InitialState(resolver.State{Endpoints: endpoints})
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{"weighted_round_robin":{"blackoutPeriod":%q,"weightUpdatePeriod":%q}}]}`,
		durationJSON(c.blackout), durationJSON(c.update))
	conn, err := grpc.NewClient(r.Scheme()+":///dockercoins-rng",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(sc),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "orca-interop client: %v\n", err)
		return 1
	}
	defer conn.Close()
	fmt.Fprintf(os.Stderr, "orca-interop client: %d targets, service config %s\n", len(c.targets), sc)

	t := &tally{
		byAddr:    peerTargets(c.targets),
		calls:     map[string]int64{},
		reports:   map[string]*v3orcapb.OrcaLoadReport{},
		strangers: map[string]bool{},
	}
	req := encodeGenerateRequest(uint32(c.size))
	start := time.Now()
	warmEnd := start.Add(time.Duration(c.warmup * float64(time.Second)))
	end := warmEnd.Add(time.Duration(c.seconds * float64(time.Second)))
	var wg sync.WaitGroup
	for range c.concurrency {
		wg.Go(func() {
			for {
				began := time.Now()
				if !began.Before(end) {
					return
				}
				var p peer.Peer
				var trailer metadata.MD
				var resp []byte
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				err := conn.Invoke(ctx, generateMethod, req, &resp, grpc.Peer(&p), grpc.Trailer(&trailer))
				cancel()
				if err == nil {
					// An OK whose answer is not `size` bytes is a failure too.
					data, derr := decodeGenerateResponse(resp)
					if derr != nil {
						err = fmt.Errorf("OK from %v, but GenerateResponse: %v", p.Addr, derr)
					} else if len(data) != c.size {
						err = fmt.Errorf("OK from %v, but %d bytes instead of %d", p.Addr, len(data), c.size)
					}
				}
				t.record(&p, !began.Before(warmEnd), err, trailer)
			}
		})
	}
	wg.Wait()

	res := resultJSON{
		Calls:      map[string]int64{},
		Share:      map[string]num{},
		Errors:     t.errors,
		FirstError: t.firstError,
		Reports:    map[string]*reportJSON{},
		BadReports: t.badReports,
	}
	var total int64
	for k, n := range t.calls {
		res.Calls[k] = n
		total += n
	}
	for _, k := range c.targets {
		res.Calls[k] += 0 // every target, 0 when it served none
	}
	for k, n := range res.Calls {
		res.Share[k] = 0
		if total > 0 {
			res.Share[k] = num(float64(n) / float64(total))
		}
	}
	for k, r := range t.reports {
		res.Reports[k] = toReportJSON(r)
	}
	out, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(os.Stderr, "orca-interop client: %v\n", err)
		return 1
	}
	os.Stdout.Write(append(out, '\n'))

	keys := make([]string, 0, len(res.Share))
	for k := range res.Share {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var shares []string
	for _, k := range keys {
		shares = append(shares, fmt.Sprintf("%s %.3f", k, float64(res.Share[k])))
	}
	fmt.Fprintf(os.Stderr, "orca-interop client: %d calls counted in %gs after %gs of warmup, %d failed; shares: %s\n",
		total, c.seconds, c.warmup, t.errors, strings.Join(shares, ", "))
	if t.succeeded == 0 {
		fmt.Fprintf(os.Stderr, "orca-interop client: no call succeeded (first failure: %s)\n", t.firstError)
		return 1
	}
	return 0
}
