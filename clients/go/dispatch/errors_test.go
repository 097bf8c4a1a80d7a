package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"dispatch.example/client/dispatch"
	pb "dispatch.example/client/dispatchv1"
)

// wrongNodeStatus is what a node answers for a shop of another node (dispatcher/cluster.py).
func wrongNodeStatus(t *testing.T) *status.Status {
	t.Helper()
	st, err := status.New(codes.FailedPrecondition, "shop 'shop-1' (partition 1936) belongs to node 'dispatch-2'").WithDetails(
		&errdetails.ErrorInfo{
			Reason: "WRONG_NODE",
			Domain: "dispatch.v1",
			Metadata: map[string]string{
				"shop_id": "shop-1", "partition": "1936", "owner": "dispatch-2",
				"owner_address": "10.0.0.3:50051", "epoch": "7",
			},
		})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestFromErrorParsesWrongNode(t *testing.T) {
	err := dispatch.FromError(wrongNodeStatus(t).Err())
	var e *dispatch.Error
	if !errors.As(fmt.Errorf("wrapped: %w", err), &e) {
		t.Fatalf("not an *Error: %T %v", err, err)
	}
	want := dispatch.WrongNode{ShopID: "shop-1", Partition: 1936, Owner: "dispatch-2", OwnerAddress: "10.0.0.3:50051", Epoch: 7}
	if e.Code != codes.FailedPrecondition || e.WrongNode == nil || *e.WrongNode != want {
		t.Fatalf("got %+v (wrong node %+v)", e, e.WrongNode)
	}
	if len(e.Details) != 1 {
		t.Fatalf("details: %v", e.Details)
	}
	if w := dispatch.WrongNodeOf(err); w == nil || w.Owner != "dispatch-2" {
		t.Fatalf("WrongNodeOf: %+v", w)
	}
	if !errors.Is(err, dispatch.ErrFailedPrecondition) || errors.Is(err, dispatch.ErrNotFound) {
		t.Fatal("errors.Is compares the code")
	}
	if !dispatch.IsFailedPrecondition(err) || dispatch.IsNotFound(err) {
		t.Fatal("Is* helpers")
	}
	// The status (details included) stays readable by grpc's own helpers.
	if st, ok := status.FromError(err); !ok || st.Code() != codes.FailedPrecondition || len(st.Details()) != 1 {
		t.Fatalf("status.FromError: %v %v", st, ok)
	}
	if !strings.Contains(err.Error(), "dispatch-2 at 10.0.0.3:50051") {
		t.Fatalf("message: %s", err)
	}
	// Converting twice changes nothing.
	if again := dispatch.FromError(err); again != err {
		t.Fatal("FromError of an *Error must return it")
	}
}

func TestOtherErrorInfoIsNotWrongNode(t *testing.T) {
	st, _ := status.New(codes.FailedPrecondition, "x").WithDetails(&errdetails.ErrorInfo{Reason: "WRONG_NODE", Domain: "other"})
	if dispatch.WrongNodeOf(dispatch.FromError(st.Err())) != nil {
		t.Fatal("a WRONG_NODE of another domain is not ours")
	}
}

func TestFromStatusOfBatchItems(t *testing.T) {
	if dispatch.FromStatus(nil) != nil || dispatch.FromStatus(&rpcstatus.Status{}) != nil {
		t.Fatal("an unset or OK status is no error")
	}
	err := dispatch.FromStatus(&rpcstatus.Status{Code: int32(codes.NotFound), Message: "shop_id: unknown shop 'x'"})
	if !dispatch.IsNotFound(err) || !errors.Is(err, dispatch.ErrNotFound) {
		t.Fatalf("got %v", err)
	}
	wrong := dispatch.FromStatus(status.Convert(wrongNodeStatus(t).Err()).Proto())
	if w := dispatch.WrongNodeOf(wrong); w == nil || w.Epoch != 7 || w.Partition != 1936 {
		t.Fatalf("got %+v", w)
	}
}

func TestCodeOfPlainErrors(t *testing.T) {
	if dispatch.Code(nil) != codes.OK || dispatch.Code(errors.New("x")) != codes.Unknown {
		t.Fatal("Code")
	}
	plain := errors.New("not a status")
	if dispatch.FromError(plain) != plain || dispatch.FromError(nil) != nil {
		t.Fatal("FromError leaves errors without a status alone")
	}
}

func TestPartitionIsCRC32IEEE(t *testing.T) {
	// zlib.crc32(shop.encode()) % 4096, as dispatcher.cluster.partition_of computes it.
	for shop, want := range map[string]uint32{"shop-1": 1936, "商店-7": 3574, "": 0} {
		if got := dispatch.Partition(shop, 4096); got != want {
			t.Errorf("Partition(%q) = %d, want %d", shop, got, want)
		}
	}
	if dispatch.Partition("shop-1", 0) != 0 {
		t.Error("no partitions: 0")
	}
}

// fake answers Dispatch with the caller's authorization metadata, and holds SetPresence
// until the call's context ends.
type fake struct {
	pb.UnimplementedDispatchServer
}

func (fake) Dispatch(ctx context.Context, req *pb.DispatchRequest) (*pb.DispatchResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return &pb.DispatchResponse{AgentId: strings.Join(md.Get("authorization"), ","), ConversationId: req.GetConversationId()}, nil
}

func (fake) SetPresence(ctx context.Context, _ *pb.SetPresenceRequest) (*pb.SetPresenceResponse, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

func startFake(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterDispatchServer(srv, fake{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestOptionsTokenAndTimeout(t *testing.T) {
	target := startFake(t)
	ctx := context.Background()
	c, err := dispatch.Dial(ctx, target, dispatch.WithInsecure(), dispatch.WithToken("s3cret"),
		dispatch.WithTimeout(200*time.Millisecond), dispatch.WithBlock())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Dispatch(ctx, &pb.DispatchRequest{ConversationId: "c1"})
	if err != nil || resp.GetAgentId() != "Bearer s3cret" || resp.GetConversationId() != "c1" {
		t.Fatalf("got %v, %v", resp, err)
	}
	start := time.Now()
	_, err = c.SetPresence(ctx, &pb.SetPresenceRequest{})
	if dispatch.Code(err) != codes.DeadlineExceeded || time.Since(start) > 5*time.Second {
		t.Fatalf("WithTimeout: %v after %v", err, time.Since(start))
	}
	// An RPC the fake does not implement: a typed UNIMPLEMENTED.
	_, err = c.ClaimFromPool(ctx, &pb.ClaimFromPoolRequest{})
	var e *dispatch.Error
	if !errors.As(err, &e) || e.Code != codes.Unimplemented {
		t.Fatalf("got %T %v", err, err)
	}
}

func TestDialWithoutTLSOptionUsesTLS(t *testing.T) {
	// A plaintext server and a client that defaults to TLS: the handshake fails.
	target := startFake(t)
	c, err := dispatch.Dial(context.Background(), target, dispatch.WithTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Dispatch(context.Background(), &pb.DispatchRequest{}); dispatch.Code(err) != codes.Unavailable &&
		dispatch.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a TLS client on a plaintext server: %v", err)
	}
}
