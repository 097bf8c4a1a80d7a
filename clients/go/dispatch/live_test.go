package dispatch_test

// Tests against live servers (tests/test_go_client.py starts them):
//   DISPATCH_TARGET          a server without authentication (dispatcher serve --no-auth)
//   DISPATCH_CLUSTER_TARGET  one node of a cluster (dispatcher serve --cluster-map F --node N)
// Without them these tests are skipped, saying so.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"dispatch.example/client/dispatch"
	pb "dispatch.example/client/dispatchv1"
)

func live(t *testing.T, env string) *dispatch.Client {
	t.Helper()
	target := os.Getenv(env)
	if target == "" {
		t.Skipf("%s is not set: no live server", env)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dispatch.Dial(ctx, target, dispatch.WithInsecure(), dispatch.WithTimeout(30*time.Second), dispatch.WithBlock())
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// unique makes ids that a second run against the same server does not collide with.
func unique(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

// shopWithOneAgent creates a shop whose one online agent takes one conversation at a time.
func shopWithOneAgent(t *testing.T, ctx context.Context, c *dispatch.Client, shop string) string {
	t.Helper()
	stored, err := c.PutShop(ctx, &pb.ShopConfig{ShopId: shop, MainAccount: shop})
	if err != nil {
		t.Fatalf("PutShop: %v", err)
	}
	if stored.GetStrategy() != pb.Strategy_STRATEGY_LEAST_SATURATION {
		t.Fatalf("PutShop answers the stored config with defaults: %v", stored)
	}
	agent := shop + ":alice"
	if err := c.PutAgent(ctx, &pb.Agent{ShopId: shop, AgentId: agent, MaxCapacity: 1}); err != nil {
		t.Fatalf("PutAgent: %v", err)
	}
	if _, err := c.SetPresence(ctx, &pb.SetPresenceRequest{ShopId: shop, AgentId: agent, Presence: pb.Presence_PRESENCE_ONLINE}); err != nil {
		t.Fatalf("SetPresence: %v", err)
	}
	return agent
}

func TestLiveRoundTrip(t *testing.T) {
	c := live(t, "DISPATCH_TARGET")
	ctx := context.Background()
	shop := unique("go-shop")
	agent := shopWithOneAgent(t, ctx, c, shop)
	if err := c.PutGroup(ctx, &pb.Group{ShopId: shop, GroupId: "pre-sales", Members: []string{agent}}); err != nil {
		t.Fatalf("PutGroup: %v", err)
	}

	watch, err := c.WatchAssignments(ctx, shop)
	if err != nil {
		t.Fatalf("WatchAssignments: %v", err)
	}
	defer watch.Close()

	first, err := c.Dispatch(ctx, &pb.DispatchRequest{ShopId: shop, BuyerId: "b1", ConversationId: "c1"})
	if err != nil || first.GetAgentId() != agent {
		t.Fatalf("first Dispatch: %v, %v", first, err)
	}
	second, err := c.Dispatch(ctx, &pb.DispatchRequest{ShopId: shop, BuyerId: "b2", ConversationId: "c2"})
	if err != nil || second.GetReason() != pb.Reason_REASON_QUEUED || second.GetPosition() != 1 || second.GetAgentId() != "" {
		t.Fatalf("second Dispatch should wait in the queue: %v, %v", second, err)
	}

	state, err := c.GetShopState(ctx, shop)
	if err != nil {
		t.Fatalf("GetShopState: %v", err)
	}
	if len(state.GetQueue()) != 1 || state.GetQueue()[0].GetConversationId() != "c2" || len(state.GetGroups()) != 1 {
		t.Fatalf("GetShopState: %v", state)
	}
	shops, err := c.ListShops(ctx)
	if err != nil || !contains(shops, shop) {
		t.Fatalf("ListShops: %v, %v", shops, err)
	}

	closed, err := c.ReportConversation(ctx, &pb.ReportConversationRequest{
		ShopId: shop, ConversationId: "c1", Event: pb.ConversationEvent_CONVERSATION_EVENT_CLOSED,
	})
	if err != nil {
		t.Fatalf("ReportConversation: %v", err)
	}
	if got := closed.GetAssignments(); len(got) != 1 || got[0].GetConversationId() != "c2" || got[0].GetAgentId() != agent {
		t.Fatalf("closing c1 hands c2 out: %v", got)
	}

	// The watch gets the same hand-out.
	got := make(chan *pb.Assignment, 1)
	failed := make(chan error, 1)
	go func() {
		a, err := watch.Recv()
		if err != nil {
			failed <- err
			return
		}
		got <- a
	}()
	select {
	case a := <-got:
		if a.GetShopId() != shop || a.GetConversationId() != "c2" || a.GetBuyerId() != "b2" || a.GetAgentId() != agent {
			t.Fatalf("watched: %v", a)
		}
	case err := <-failed:
		t.Fatalf("watch: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the watch got no hand-out")
	}

	conv, err := c.GetConversation(ctx, shop, "c2")
	if err != nil || conv.GetAgentId() != agent {
		t.Fatalf("GetConversation: %v, %v", conv, err)
	}

	// Close ends the watch with CANCELED.
	watch.Close()
	if _, err := watch.Recv(); dispatch.Code(err) != codes.Canceled {
		t.Fatalf("Recv after Close: %v", err)
	}
}

func TestLiveNotFound(t *testing.T) {
	c := live(t, "DISPATCH_TARGET")
	ctx := context.Background()
	missing := unique("go-missing")
	_, err := c.Dispatch(ctx, &pb.DispatchRequest{ShopId: missing, BuyerId: "b", ConversationId: "c"})
	var e *dispatch.Error
	if !errors.As(err, &e) || e.Code != codes.NotFound || !strings.Contains(e.Message, missing) {
		t.Fatalf("Dispatch to an unknown shop: %T %v", err, err)
	}
	if !dispatch.IsNotFound(err) || !errors.Is(err, dispatch.ErrNotFound) || e.WrongNode != nil {
		t.Fatalf("helpers on %v", err)
	}
	if _, err := c.GetShopState(ctx, missing); !dispatch.IsNotFound(err) {
		t.Fatalf("GetShopState of an unknown shop: %v", err)
	}
	if err := c.PutAgent(ctx, &pb.Agent{ShopId: missing, AgentId: "a", MaxCapacity: 1}); !dispatch.IsNotFound(err) {
		t.Fatalf("PutAgent in an unknown shop: %v", err)
	}
	// A malformed request is INVALID_ARGUMENT.
	if _, err := c.Dispatch(ctx, &pb.DispatchRequest{BuyerId: "b", ConversationId: "c"}); !dispatch.IsInvalidArgument(err) ||
		!errors.Is(err, dispatch.ErrInvalidArgument) {
		t.Fatalf("Dispatch without a shop: %v", err)
	}
}

func TestLiveBatchWithAnItemError(t *testing.T) {
	c := live(t, "DISPATCH_TARGET")
	ctx := context.Background()
	shop := unique("go-batch")
	agent := shopWithOneAgent(t, ctx, c, shop)
	missing := unique("go-missing")

	answers, err := c.DispatchBatch(ctx, []*pb.DispatchRequest{
		{ShopId: shop, BuyerId: "b1", ConversationId: "c1"},
		{ShopId: missing, BuyerId: "b2", ConversationId: "c2"},
		{ShopId: shop, BuyerId: "b3", ConversationId: "c3"},
	})
	if err != nil || len(answers) != 3 {
		t.Fatalf("DispatchBatch: %v, %v", answers, err)
	}
	if dispatch.FromStatus(answers[0].GetError()) != nil || answers[0].GetAgentId() != agent {
		t.Fatalf("item 0: %v", answers[0])
	}
	itemErr := dispatch.FromStatus(answers[1].GetError())
	var e *dispatch.Error
	if !errors.As(itemErr, &e) || e.Code != codes.NotFound || answers[1].GetConversationId() != "c2" {
		t.Fatalf("item 1 should fail NOT_FOUND: %v (%v)", itemErr, answers[1])
	}
	if dispatch.FromStatus(answers[2].GetError()) != nil || answers[2].GetReason() != pb.Reason_REASON_QUEUED {
		t.Fatalf("item 2 is queued behind item 0: %v", answers[2])
	}

	// Operate: a mix of kinds, one failing on its own.
	results, err := c.Operate(ctx, []*pb.Operation{
		{Kind: &pb.Operation_SetPresence{SetPresence: &pb.SetPresenceRequest{
			ShopId: shop, AgentId: shop + ":nobody", Presence: pb.Presence_PRESENCE_ONLINE,
		}}},
		{Kind: &pb.Operation_ReportConversation{ReportConversation: &pb.ReportConversationRequest{
			ShopId: shop, ConversationId: "c1", Event: pb.ConversationEvent_CONVERSATION_EVENT_CLOSED,
		}}},
	})
	if err != nil || len(results) != 2 {
		t.Fatalf("Operate: %v, %v", results, err)
	}
	if !dispatch.IsNotFound(dispatch.FromStatus(results[0].GetError())) {
		t.Fatalf("result 0 should fail NOT_FOUND: %v", results[0])
	}
	closed := results[1].GetReportConversation()
	if dispatch.FromStatus(results[1].GetError()) != nil || len(closed.GetAssignments()) != 1 ||
		closed.GetAssignments()[0].GetConversationId() != "c3" {
		t.Fatalf("result 1 closes c1 and hands c3 out: %v", results[1])
	}
}

func TestLiveWrongNode(t *testing.T) {
	c := live(t, "DISPATCH_CLUSTER_TARGET")
	ctx := context.Background()
	cmap, err := c.GetClusterMap(ctx)
	if err != nil || cmap.GetPartitionCount() == 0 || len(cmap.GetNodes()) < 2 {
		t.Fatalf("GetClusterMap: %v, %v", cmap, err)
	}
	// A shop that another node owns, found with the client's own partition function.
	owners := map[uint32]*pb.ClusterNode{}
	for _, node := range cmap.GetNodes() {
		for _, r := range node.GetPartitions() {
			for p := r.GetStart(); p < r.GetEnd(); p++ {
				owners[p] = node
			}
		}
	}
	var shop string
	var owner *pb.ClusterNode
	for i := 0; owner == nil || owner.GetName() == cmap.GetNode(); i++ {
		shop = fmt.Sprintf("go-foreign-%d", i)
		owner = owners[dispatch.Partition(shop, cmap.GetPartitionCount())]
	}
	want := dispatch.WrongNode{
		ShopID: shop, Partition: dispatch.Partition(shop, cmap.GetPartitionCount()),
		Owner: owner.GetName(), OwnerAddress: owner.GetAddress(), Epoch: cmap.GetEpoch(),
	}

	_, err = c.PutShop(ctx, &pb.ShopConfig{ShopId: shop, MainAccount: shop})
	var e *dispatch.Error
	if !errors.As(err, &e) || e.Code != codes.FailedPrecondition || e.WrongNode == nil || *e.WrongNode != want {
		t.Fatalf("PutShop of a foreign shop: %v (wrong node %+v, want %+v)", err, dispatch.WrongNodeOf(err), want)
	}
	_, err = c.Dispatch(ctx, &pb.DispatchRequest{ShopId: shop, BuyerId: "b", ConversationId: "c"})
	if w := dispatch.WrongNodeOf(err); w == nil || *w != want || !dispatch.IsFailedPrecondition(err) {
		t.Fatalf("Dispatch to a foreign shop: %v", err)
	}
	answers, err := c.DispatchBatch(ctx, []*pb.DispatchRequest{{ShopId: shop, BuyerId: "b", ConversationId: "c"}})
	if err != nil || len(answers) != 1 {
		t.Fatalf("DispatchBatch: %v, %v", answers, err)
	}
	if w := dispatch.WrongNodeOf(dispatch.FromStatus(answers[0].GetError())); w == nil || *w != want {
		t.Fatalf("a batch item for a foreign shop: %v", answers[0])
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
