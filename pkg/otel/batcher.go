package otel

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// batcher is the span processor between a proxy's request path and the OTLP
// exporter. Like the SDK's BatchSpanProcessor it queues ended, sampled spans
// and exports them in batches from one goroutine, but it counts what it
// drops and fails, which a proxy needs to report.
//
// Invariants: the queue is a buffered channel of MaxQueueSize, so at most
// MaxQueueSize + MaxExportBatch spans are held at once; OnEnd never blocks
// (a full queue or a stopped batcher drops the span and counts it); only the
// run goroutine touches the current batch and calls the exporter, each call
// bounded by the export timeout. The counters are atomics, read by Stats.
type batcher struct {
	exp       sdktrace.SpanExporter
	queue     chan sdktrace.ReadOnlySpan
	batchSize int
	delay     time.Duration
	timeout   time.Duration

	flushReq chan chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	stopped  atomic.Bool
	stopCtx  context.Context // set before stop is closed

	enqueued, dropped, exported, failed atomic.Uint64
	lastErr                             atomic.Pointer[error]
}

func newBatcher(exp sdktrace.SpanExporter, queueSize, batchSize int, delay, timeout time.Duration) *batcher {
	b := &batcher{
		exp:       exp,
		queue:     make(chan sdktrace.ReadOnlySpan, queueSize),
		batchSize: min(batchSize, queueSize),
		delay:     delay,
		timeout:   timeout,
		flushReq:  make(chan chan struct{}),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	go b.run()
	return b
}

func (b *batcher) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

func (b *batcher) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	if b.stopped.Load() {
		b.dropped.Add(1)
		return
	}
	select {
	case b.queue <- s:
		b.enqueued.Add(1)
	default:
		b.dropped.Add(1)
	}
}

func (b *batcher) run() {
	defer close(b.done)
	batch := make([]sdktrace.ReadOnlySpan, 0, b.batchSize)
	timer := time.NewTimer(b.delay)
	defer timer.Stop()
	flush := func(ctx context.Context) {
		if len(batch) == 0 {
			return
		}
		b.export(ctx, batch)
		clear(batch)
		batch = batch[:0]
	}
	// drain exports everything queued now, in batches.
	drain := func(ctx context.Context) {
		for {
			select {
			case s := <-b.queue:
				batch = append(batch, s)
				if len(batch) >= b.batchSize {
					flush(ctx)
				}
			default:
				flush(ctx)
				return
			}
		}
	}
	for {
		select {
		case s := <-b.queue:
			batch = append(batch, s)
			if len(batch) >= b.batchSize {
				flush(context.Background())
				timer.Reset(b.delay)
			}
		case <-timer.C:
			flush(context.Background())
			timer.Reset(b.delay)
		case ack := <-b.flushReq:
			drain(context.Background())
			close(ack)
		case <-b.stop:
			drain(b.stopCtx)
			return
		}
	}
}

func (b *batcher) export(parent context.Context, batch []sdktrace.ReadOnlySpan) {
	ctx, cancel := context.WithTimeout(parent, b.timeout)
	defer cancel()
	if err := b.exp.ExportSpans(ctx, batch); err != nil {
		b.failed.Add(uint64(len(batch)))
		b.lastErr.Store(&err)
		return
	}
	b.exported.Add(uint64(len(batch)))
}

// ForceFlush exports what is queued now, waiting at most until ctx is done.
func (b *batcher) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case b.flushReq <- ack:
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops accepting spans, exports what is queued until ctx is done,
// then shuts the exporter down.
func (b *batcher) Shutdown(ctx context.Context) error {
	var err error
	b.stopOnce.Do(func() {
		b.stopped.Store(true)
		b.stopCtx = ctx
		close(b.stop)
		select {
		case <-b.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		err = errors.Join(err, b.exp.Shutdown(ctx))
	})
	return err
}

// SpanStats counts the spans that went through the export queue.
type SpanStats struct {
	// Queued is the number of spans waiting for export now.
	Queued int
	// Enqueued counts the sampled spans accepted into the queue.
	Enqueued uint64
	// Dropped counts the sampled spans refused because the queue was full
	// (the collector is slow or down) or export had stopped.
	Dropped uint64
	// Exported counts the spans the collector accepted.
	Exported uint64
	// Failed counts the spans whose export failed (after the exporter's
	// retries, within the export timeout).
	Failed uint64
	// LastError is the last export error, if any.
	LastError error
}

func (b *batcher) stats() SpanStats {
	s := SpanStats{
		Queued:   len(b.queue),
		Enqueued: b.enqueued.Load(),
		Dropped:  b.dropped.Load(),
		Exported: b.exported.Load(),
		Failed:   b.failed.Load(),
	}
	if e := b.lastErr.Load(); e != nil {
		s.LastError = *e
	}
	return s
}
