// Command bulk is the TCP and DNS test app of the ztunnel end-to-end tests
// (test/e2e) and of `make bench-ztunnel` (hack/bench/ztunnel). It is built
// static into the bulk image by hack/images.sh, beside fortio.
//
//	bulk serve -listen :9000            TCP server (the first line picks the mode)
//	bulk send -addr host:9000 -bytes N  send N bytes, compare sha256 with the server's
//	bulk stream -addr host:9000         long-lived echo stream, every byte checked
//	bulk dns -server ip:53 name...      A queries, one JSON line per name
//
// Server modes, chosen by the client's first line: "sink" reads to EOF and
// answers "<bytes> <sha256 hex>"; "discard" the same without the hash;
// "echo" copies everything back.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bulk serve|send|stream|stop-streams|dns [flags]")
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{"serve": serve, "send": send, "stream": stream, "stop-streams": stopStreams, "dns": query}
	f, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "bulk: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := f(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "bulk %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":9000", "TCP listen address")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go handle(c)
	}
}

func handle(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 256<<10)
	mode, err := r.ReadString('\n')
	if err != nil {
		return
	}
	switch strings.TrimSpace(mode) {
	case "sink", "discard":
		var h hash.Hash
		w := io.Discard
		if strings.TrimSpace(mode) == "sink" {
			h = sha256.New()
			w = h
		}
		n, err := io.CopyBuffer(w, r, make([]byte, 256<<10))
		if err != nil {
			fmt.Fprintf(os.Stderr, "sink from %s: %v after %d bytes\n", c.RemoteAddr(), err, n)
			return
		}
		sum := "-"
		if h != nil {
			sum = hex.EncodeToString(h.Sum(nil))
		}
		fmt.Fprintf(c, "%d %s\n", n, sum)
	case "echo":
		_, _ = io.CopyBuffer(c, r, make([]byte, 64<<10))
	default:
		fmt.Fprintf(c, "unknown mode %q\n", mode)
	}
}

// pattern fills b with the deterministic stream of seed: the bytes the
// sender hashes are the bytes it sends.
type pattern struct{ rng *rand.ChaCha8 }

func newPattern() *pattern { return &pattern{rand.NewChaCha8([32]byte{'b', 'u', 'l', 'k'})} }

func (p *pattern) fill(b []byte) { _, _ = p.rng.Read(b) }

type sendResult struct {
	Bytes        int64   `json:"bytes"`
	SHA256       string  `json:"sha256"`
	ServerBytes  int64   `json:"server_bytes"`
	ServerSHA256 string  `json:"server_sha256"`
	Seconds      float64 `json:"seconds"`
	MBps         float64 `json:"mbps"`
}

func send(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	addr := fs.String("addr", "", "server host:port")
	size := fs.Int64("bytes", 1<<20, "bytes to send")
	marker := fs.String("marker", "", "send this string repeated instead of the random pattern")
	noHash := fs.Bool("nohash", false, "do not hash (throughput runs): the server discards")
	timeout := fs.Duration("timeout", 10*time.Minute, "overall deadline")
	_ = fs.Parse(args)
	c, err := net.DialTimeout("tcp", *addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(*timeout))
	mode := "sink\n"
	if *noHash {
		mode = "discard\n"
	}
	if _, err := io.WriteString(c, mode); err != nil {
		return fmt.Errorf("write mode: %w", err)
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	p := newPattern()
	if *marker != "" {
		for i := range buf {
			buf[i] = (*marker)[i%len(*marker)]
		}
	}
	start := time.Now()
	var sent int64
	for sent < *size {
		b := buf[:min(int64(len(buf)), *size-sent)]
		if *marker == "" {
			p.fill(b)
		}
		if !*noHash {
			h.Write(b)
		}
		n, err := c.Write(b)
		sent += int64(n)
		if err != nil {
			return fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the server's answer after sending %d bytes: %w", sent, err)
	}
	secs := time.Since(start).Seconds()
	res := sendResult{Bytes: sent, Seconds: secs, MBps: float64(sent) / secs / 1e6, SHA256: "-"}
	if !*noHash {
		res.SHA256 = hex.EncodeToString(h.Sum(nil))
	}
	if _, err := fmt.Sscanf(line, "%d %s", &res.ServerBytes, &res.ServerSHA256); err != nil {
		return fmt.Errorf("server answered %q: %w", line, err)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// stream keeps one connection to an echo server, writing a counter pattern
// every interval and checking that every byte comes back in order. It
// prints "ok sent=N recv=M" every report interval and, when the
// connection fails, "closed sent=N recv=M err=..." before exiting 3.
// After -duration it stops writing, waits (up to 10 s) until every byte
// sent came back, and prints "done sent=N recv=N" (exit 0), or "closed
// ... err=..." (exit 3) when bytes are missing.
func stream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	addr := fs.String("addr", "", "echo server host:port")
	chunk := fs.Int("chunk", 1024, "bytes per write")
	every := fs.Duration("interval", 10*time.Millisecond, "time between writes")
	report := fs.Duration("report", 250*time.Millisecond, "status line interval")
	duration := fs.Duration("duration", time.Hour, "stop (exit 0) after this long")
	_ = fs.Parse(args)
	c, err := net.DialTimeout("tcp", *addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "echo\n"); err != nil {
		return err
	}
	var sent, recv atomic.Int64
	errc := make(chan error, 2)
	stopWriting := make(chan struct{})
	writerDone := make(chan struct{})
	go func() { // writer
		defer close(writerDone)
		buf := make([]byte, *chunk)
		t := time.NewTicker(*every)
		defer t.Stop()
		for {
			select {
			case <-stopWriting:
				return
			case <-t.C:
			}
			off := sent.Load()
			for i := range buf {
				buf[i] = patternByte(off + int64(i))
			}
			n, err := c.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				errc <- fmt.Errorf("write: %w", err)
				return
			}
		}
	}()
	go func() { // reader: every byte must be the next of the pattern
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			off := recv.Load()
			for i := range n {
				if buf[i] != patternByte(off+int64(i)) {
					errc <- fmt.Errorf("byte %d: got %#x, want %#x: data lost or corrupted", off+int64(i), buf[i], patternByte(off+int64(i)))
					return
				}
			}
			recv.Add(int64(n))
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				errc <- fmt.Errorf("read: %w", err)
				return
			}
		}
	}()
	tick := time.NewTicker(*report)
	defer tick.Stop()
	stop := time.After(*duration)
	for {
		select {
		case err := <-errc:
			fmt.Printf("closed sent=%d recv=%d err=%q\n", sent.Load(), recv.Load(), err.Error())
			os.Exit(3)
		case <-tick.C:
			fmt.Printf("ok sent=%d recv=%d\n", sent.Load(), recv.Load())
		case <-stop:
			close(stopWriting)
			<-writerDone
			for deadline := time.Now().Add(10 * time.Second); recv.Load() < sent.Load() && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if s, r := sent.Load(), recv.Load(); r != s {
				fmt.Printf("closed sent=%d recv=%d err=%q\n", s, r, fmt.Sprintf("%d bytes sent never came back", s-r))
				os.Exit(3)
			}
			fmt.Printf("done sent=%d recv=%d\n", sent.Load(), recv.Load())
			return nil
		}
	}
}

// stopStreams ends every other `bulk stream` in this container (SIGTERM):
// a test that started one with kubectl exec cannot count on the exec's end
// to stop it, and a stream left running holds its connection open.
func stopStreams(_ []string) error {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	stopped := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) >= 2 && strings.HasSuffix(args[0], "bulk") && args[1] == "stream" {
			if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
				stopped++
			}
		}
	}
	fmt.Printf("stopped %d streams\n", stopped)
	return nil
}

// patternByte is byte off of the stream pattern: the 8-byte little-endian
// block index, so a dropped or repeated block shows.
func patternByte(off int64) byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(off/8))
	return b[off%8]
}

type dnsResult struct {
	Name  string   `json:"name"`
	Net   string   `json:"net"`
	Rcode string   `json:"rcode"`
	AA    bool     `json:"aa"`
	IPs   []string `json:"ips"`
	TTL   uint32   `json:"ttl"`
	Error string   `json:"error,omitempty"`
}

// query sends one A query per name straight to -server (no search path),
// or, with -system, resolves each name through the pod's resolv.conf.
func query(args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	server := fs.String("server", "", "ip:port to query")
	network := fs.String("net", "udp", "udp or tcp")
	system := fs.Bool("system", false, "resolve through /etc/resolv.conf (search path applied) with Go's resolver")
	_ = fs.Parse(args)
	enc := json.NewEncoder(os.Stdout)
	for _, name := range fs.Args() {
		res := dnsResult{Name: name, Net: *network}
		if *system {
			r := &net.Resolver{PreferGo: true}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ips, err := r.LookupHost(ctx, name)
			cancel()
			res.IPs = ips
			if err != nil {
				res.Error = err.Error()
			}
		} else {
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(name), dns.TypeA)
			c := &dns.Client{Net: *network, Timeout: 5 * time.Second}
			resp, _, err := c.Exchange(m, *server)
			if err != nil {
				res.Error = err.Error()
			} else {
				res.Rcode = dns.RcodeToString[resp.Rcode]
				res.AA = resp.Authoritative
				for _, rr := range resp.Answer {
					if a, ok := rr.(*dns.A); ok {
						res.IPs = append(res.IPs, a.A.String())
						res.TTL = a.Hdr.Ttl
					}
				}
			}
		}
		if err := enc.Encode(res); err != nil {
			return err
		}
	}
	return nil
}
