package dispatch

import (
	"context"
	"io"

	pb "dispatch.example/client/dispatchv1"
)

// Watch is an open WatchAssignments stream: every hand-out made after the
// original Dispatch call (queue drain, staging push, pool claim, re-route) for
// its shops, one Assignment at a time, in the order they happened.
type Watch struct {
	stream  pb.Dispatch_WatchAssignmentBatchesClient
	cancel  context.CancelFunc
	pending []*pb.Assignment
}

// WatchAssignments opens a watch of the given shops (none: every shop,
// including shops created later). It returns once the server has subscribed
// it, so every hand-out after the return reaches Recv. It reads the grouped
// form, WatchAssignmentBatches, and yields the assignments one by one. The
// watch lasts until ctx ends or Close; the client's timeout does not apply.
func (c *Client) WatchAssignments(ctx context.Context, shopIDs ...string) (*Watch, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.dispatch.WatchAssignmentBatches(ctx, &pb.WatchAssignmentBatchesRequest{ShopIds: shopIDs})
	if err == nil {
		// The server sends its headers once the subscription is in place.
		_, err = stream.Header()
	}
	if err != nil {
		cancel()
		return nil, FromError(err)
	}
	return &Watch{stream: stream, cancel: cancel}, nil
}

// Recv blocks until the next hand-out. It answers io.EOF when the server ended
// the watch normally (at its shutdown), and an *Error otherwise
// (RESOURCE_EXHAUSTED for a watcher that fell too far behind, CANCELED after
// Close or the end of the context).
func (w *Watch) Recv() (*pb.Assignment, error) {
	for len(w.pending) == 0 {
		batch, err := w.stream.Recv()
		if err == io.EOF {
			return nil, io.EOF
		}
		if err != nil {
			return nil, FromError(err)
		}
		w.pending = batch.GetAssignments()
	}
	next := w.pending[0]
	w.pending[0] = nil
	w.pending = w.pending[1:]
	return next, nil
}

// Close ends the watch; a Recv in progress returns a CANCELED *Error.
func (w *Watch) Close() { w.cancel() }
