// SPDX-License-Identifier: MIT
// The project's own test contract: the ModelRegistry read interface of docs CHAIN.md section 3,
// written from that interface alone. Not Fabstir's contract; for local test chains only.
pragma solidity ^0.8.24;

contract ModelRegistry {
    struct Model {
        string huggingfaceRepo;
        string fileName;
        bytes32 sha256Hash;
        uint256 approvalTier;
        bool active;
        uint256 timestamp;
    }

    address public owner;
    bytes32[] private modelIds;
    mapping(bytes32 => Model) private models;

    event ModelAdded(bytes32 indexed modelId, string huggingfaceRepo, string fileName, bytes32 sha256Hash);
    event ModelDeactivated(bytes32 indexed modelId);

    modifier onlyOwner() {
        require(msg.sender == owner, "Only owner");
        _;
    }

    constructor() {
        owner = msg.sender;
    }

    /// keccak256(bytes(repo + "/" + fileName)), as on the network.
    function getModelId(string memory repo, string memory fileName) public pure returns (bytes32) {
        return keccak256(bytes(string.concat(repo, "/", fileName)));
    }

    /// Owner only (test setup): approve a model; returns its id.
    function addModel(string calldata repo, string calldata fileName, bytes32 sha256Hash)
        external
        onlyOwner
        returns (bytes32 modelId)
    {
        require(bytes(repo).length > 0 && bytes(fileName).length > 0, "Empty model name");
        modelId = getModelId(repo, fileName);
        require(models[modelId].timestamp == 0, "Model already exists");
        models[modelId] = Model(repo, fileName, sha256Hash, 1, true, block.timestamp);
        modelIds.push(modelId);
        emit ModelAdded(modelId, repo, fileName, sha256Hash);
    }

    /// Owner only (tests): withdraw a model's approval.
    function deactivateModel(bytes32 modelId) external onlyOwner {
        require(models[modelId].timestamp != 0, "Model not found");
        models[modelId].active = false;
        emit ModelDeactivated(modelId);
    }

    function getAllModels() external view returns (bytes32[] memory) {
        return modelIds;
    }

    function getModel(bytes32 modelId) external view returns (Model memory) {
        return models[modelId];
    }

    function isModelApproved(bytes32 modelId) public view returns (bool) {
        return models[modelId].active;
    }
}
