package dispatch_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"dispatch.example/client/dispatch"
	pb "dispatch.example/client/dispatchv1"
)

// The integrator's loop: an agent comes online, conversations are routed, and the
// hand-outs made later (a close lets a queued conversation through) reach a watch.
// (Compiled by go test, not run: it needs a server, as clients/go/README.md shows.)
func Example() {
	ctx := context.Background()
	c, err := dispatch.Dial(ctx, "127.0.0.1:50051", dispatch.WithInsecure(), dispatch.WithTimeout(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	shop := fmt.Sprintf("shop-%d", time.Now().UnixNano()) // a new shop on every run
	if _, err := c.PutShop(ctx, &pb.ShopConfig{ShopId: shop, MainAccount: shop}); err != nil {
		log.Fatal(err)
	}
	agent := shop + ":alice"
	if err := c.PutAgent(ctx, &pb.Agent{ShopId: shop, AgentId: agent, MaxCapacity: 1}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.SetPresence(ctx, &pb.SetPresenceRequest{ShopId: shop, AgentId: agent, Presence: pb.Presence_PRESENCE_ONLINE}); err != nil {
		log.Fatal(err)
	}

	watch, err := c.WatchAssignments(ctx, shop)
	if err != nil {
		log.Fatal(err)
	}
	defer watch.Close()

	for _, conv := range []string{"c1", "c2"} {
		resp, err := c.Dispatch(ctx, &pb.DispatchRequest{ShopId: shop, BuyerId: "buyer-" + conv, ConversationId: conv})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(conv, "->", resp.GetAgentId(), resp.GetReason(), resp.GetPosition())
	}
	if _, err := c.ReportConversation(ctx, &pb.ReportConversationRequest{
		ShopId: shop, ConversationId: "c1", Event: pb.ConversationEvent_CONVERSATION_EVENT_CLOSED,
	}); err != nil {
		log.Fatal(err)
	}
	handOut, err := watch.Recv()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("handed out:", handOut.GetConversationId(), "->", handOut.GetAgentId())

	// Typed errors.
	_, err = c.Dispatch(ctx, &pb.DispatchRequest{ShopId: "no-such-shop", BuyerId: "b", ConversationId: "c"})
	fmt.Println(dispatch.IsNotFound(err), err)
}
